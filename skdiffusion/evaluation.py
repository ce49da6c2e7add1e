"""In-context benchmark on linear-Gaussian tasks against the exact Bayes posterior.

For y = x.w + sigma e with w ~ N(0, I_d), the posterior is w ~ N(mu, S) with
S = (I + X^T X / sigma^2)^-1 and mu = S X^T y / sigma^2; the predictive at x* is
N(x*.mu, x*^T S x* + sigma^2). Its mean has the lowest possible MSE.

That posterior knows that the intercept is 0. An estimator that centres its context (as
``StandardScaler`` does) cannot know it, so the lowest error it can reach is that of the
posterior with an unknown intercept under a flat prior, :func:`bayes_predictive` with
``intercept=True``: the same posterior fitted to the centred context, mean
ybar + (x* - xbar).mu and variance sigma^2 / k added. Near k = d + 2 it is 2-3 times
the zero-intercept Bayes error (k = d + 1 points determine d slopes and an intercept).

A model meta-trained on a prior is scored against that prior's own Bayes answer
(:func:`noise_marginal_predictive`, the noise std unknown within its range), and, since it
sees y standardized, against the same answer with y's scale unknown too
(:func:`scale_free_predictive`).
"""

from statistics import NormalDist

import numpy as np
import torch
from scipy import special

from .inference import sample_raw_tasks


def linear_tasks(n_tasks, n_context, n_queries, d, noise_std, seed):
    """Raw (unstandardized) linear-Gaussian tasks as float64 numpy arrays."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_tasks, n_context + n_queries, d))
    w = rng.standard_normal((n_tasks, d))
    y = np.einsum("tnd,td->tn", X, w) + noise_std * rng.standard_normal(X.shape[:2])
    return X[:, :n_context], y[:, :n_context], X[:, n_context:], y[:, n_context:]


def bayes_predictive(X_ctx, y_ctx, X_q, noise_std, intercept=False):
    """Exact posterior predictive mean and std for one linear-Gaussian task; with
    ``intercept`` for y = b + x.w + noise with a flat prior on b (shift-invariant)."""
    if intercept and len(y_ctx):
        x_mean, y_mean = X_ctx.mean(0), y_ctx.mean()
        mean, std = bayes_predictive(X_ctx - x_mean, y_ctx - y_mean, X_q - x_mean, noise_std)
        return mean + y_mean, np.sqrt(std**2 + noise_std**2 / len(y_ctx))
    d = X_q.shape[1]
    S = np.linalg.inv(np.eye(d) + X_ctx.T @ X_ctx / noise_std**2)
    mu = S @ X_ctx.T @ y_ctx / noise_std**2
    var = np.einsum("qi,ij,qj->q", X_q, S, X_q) + noise_std**2
    return X_q @ mu, np.sqrt(var)


def _centred_eigh(X_ctx, y_ctx):
    """(x_mean, y_mean, lam, V, b): the context's means (0 when empty), the eigenpairs of
    the centred Gram matrix Xc^T Xc (lam clipped at 0) and b = V^T Xc^T yc."""
    x_mean, y_mean = (X_ctx.mean(0), y_ctx.mean()) if len(y_ctx) else (0.0, 0.0)
    Xc = X_ctx - x_mean
    lam, V = np.linalg.eigh(Xc.T @ Xc)
    return x_mean, y_mean, lam.clip(min=0), V, V.T @ Xc.T @ (y_ctx - y_mean)


def _evidence_terms(X_ctx, y_ctx, noise_stds):
    """(logdet, quad) of the centred context's Gaussian N(0, Xc Xc^T + sigma^2 I) on the
    complement of the constant vector (k - 1 dims), one value per sigma, computed in the
    eigenbasis of G = Xc^T Xc (determinant lemma and Woodbury)."""
    k = len(y_ctx)
    _, y_mean, lam, _, b = _centred_eigh(X_ctx, y_ctx)
    yc = y_ctx - y_mean
    s2 = np.asarray(noise_stds, dtype=float)[:, None] ** 2
    quad = (yc @ yc - (b**2 / (s2 + lam)).sum(1)) / s2[:, 0]
    logdet = (k - 1) * np.log(s2[:, 0]) + np.log1p(lam / s2).sum(1)
    return logdet, quad


def log_evidence(X_ctx, y_ctx, noise_stds):
    """log p(y_ctx | X_ctx, sigma) for each sigma in ``noise_stds``, under y = b + x.w +
    sigma e with w ~ N(0, I) and a flat prior on b (up to a constant in sigma).

    Integrating b out leaves the centred data as k - 1 observations,
    N(0, Xc Xc^T + sigma^2 I) on the complement of the constant vector.
    """
    logdet, quad = _evidence_terms(X_ctx, y_ctx, noise_stds)
    return -0.5 * ((len(y_ctx) - 1) * np.log(2 * np.pi) + logdet + quad)


def _noise_grid(noise_range, n_grid):
    """Midpoints of ``n_grid`` log-spaced cells of ``noise_range`` (one if it is a point)."""
    lo, hi = np.log(noise_range[0]), np.log(noise_range[1])
    n = n_grid if hi > lo else 1
    return np.exp(lo + (np.arange(n) + 0.5) * (hi - lo) / n)


def noise_posterior(X_ctx, y_ctx, noise_range, n_grid=200):
    """(sigmas, weights): the posterior of the noise std on ``n_grid`` log-spaced cells
    (midpoints) for a prior log-uniform in ``noise_range``, from :func:`log_evidence`."""
    sigmas = _noise_grid(noise_range, n_grid)
    logw = log_evidence(X_ctx, y_ctx, sigmas) if len(y_ctx) > 1 else np.zeros(len(sigmas))
    w = np.exp(logw - logw.max())
    return sigmas, w / w.sum()


def noise_marginal_predictive(X_ctx, y_ctx, X_q, noise_range, n_grid=200):
    """Posterior predictive mean and std with an unknown intercept (flat prior) and an
    unknown noise std, log-uniform in ``noise_range`` (a training prior's): the mixture
    of :func:`bayes_predictive` answers over :func:`noise_posterior`. Its mean has the
    lowest MSE on tasks drawn from that prior (w ~ N(0, I), any intercept) for anyone who,
    like a model meta-trained on it, knows the noise's range but not its level.
    """
    sigmas, w = noise_posterior(X_ctx, y_ctx, noise_range, n_grid)
    m, v = _intercept_predictive_grid(X_ctx, y_ctx, X_q, sigmas)
    mean = w @ m
    return mean, np.sqrt(np.maximum(w @ (v + m**2) - mean**2, 0))


def noise_marginal_cdf(X_ctx, y_ctx, X_q, y_q, noise_range, n_grid=200):
    """CDF of :func:`noise_marginal_predictive`'s distribution (its Gaussian mixture) at
    each query's ``y_q``: the PIT, whose central 90 % band is the exact 90 % interval."""
    sigmas, w = noise_posterior(X_ctx, y_ctx, noise_range, n_grid)
    m, v = _intercept_predictive_grid(X_ctx, y_ctx, X_q, sigmas)
    return w @ special.ndtr((np.asarray(y_q)[None] - m) / np.sqrt(v))


def noise_marginal_samples(X_ctx, y_ctx, X_q, noise_range, n_samples, rng, n_grid=200,
                           antithetic=False):
    """(n_samples, n_queries) draws, independent by default, from
    :func:`noise_marginal_predictive`'s distribution (a mixture of Gaussians over the noise
    grid; one noise cell per draw, shared by the queries), e.g. to score a perfect model's
    intervals the way sampled predictions are scored. ``rng`` is a numpy ``Generator``.

    With ``antithetic`` (``n_samples`` even) rows 2i and 2i + 1 are a pair that shares
    its noise cell and mirrors its Gaussian noise, m + s z and m - s z: the counterpart
    of the estimator's antithetic diffusion noise (e, -e), whose pairs mirror each other
    about the mean wherever the predictive is symmetric."""
    if antithetic and n_samples % 2:
        raise ValueError(f"antithetic draws come in pairs; n_samples={n_samples} is odd")
    sigmas, w = noise_posterior(X_ctx, y_ctx, noise_range, n_grid)
    m, v = _intercept_predictive_grid(X_ctx, y_ctx, X_q, sigmas)
    n_free = n_samples // 2 if antithetic else n_samples
    cell = rng.choice(len(sigmas), size=n_free, p=w)
    z = rng.standard_normal((n_free, len(X_q)))
    if antithetic:
        cell, z = cell.repeat(2), np.stack([z, -z], axis=1).reshape(n_samples, len(X_q))
    return m[cell] + np.sqrt(v[cell]) * z


def _scale_free_mixture(X_ctx, y_ctx, X_q, noise_range, n_grid):
    """(weights, locations, scales, dof): the Student t mixture of
    :func:`scale_free_predictive`, one component per noise cell."""
    k = len(y_ctx)
    if k < 3:
        raise ValueError(f"the scale-free answer needs at least 3 context points, got {k}: "
                         "standardized, fewer carry no scale and the predictive has no mean")
    sigmas = _noise_grid(noise_range, n_grid)
    logdet, quad = _evidence_terms(X_ctx, y_ctx, sigmas)
    logw = -0.5 * logdet - 0.5 * (k - 1) * np.log(quad)
    w = np.exp(logw - logw.max())
    m, v = _intercept_predictive_grid(X_ctx, y_ctx, X_q, sigmas)
    return w / w.sum(), m, np.sqrt(v * quad[:, None] / (k - 1)), k - 1


def scale_free_predictive(X_ctx, y_ctx, X_q, noise_range, n_grid=200):
    """Predictive mean and std at ``X_q`` under the prior of
    :func:`noise_marginal_predictive` for someone who sees y only up to an affine map, as a
    model fed standardized y does: standardizing hides the scale of y, which tells the
    weights' scale (x is taken as seen). It is what a model meta-trained to perfection on
    that prior would predict, and for k >= 4 its mean has the lowest squared error in
    standardized units (those the model is trained in) of any answer equivariant in y.
    Not in y's own units, where a task's error counts s^2 times: there the optimum weights
    each noise cell by a further E[s^2 | sigma] = (k - 1) / q.

    The seen y is the true one divided by an unknown s, whose density given the seen y and
    a noise cell sigma is p(s y | sigma) s^(k-2) (the polar Jacobian of the k - 1 centred
    values): s^2 is Gamma((k - 1) / 2, q / 2), q the context's Mahalanobis form under
    sigma. So the predictive is a mixture over sigma of Student t's with k - 1 degrees of
    freedom, location that of ``bayes_predictive(..., intercept=True)`` and squared scale
    its variance times q / (k - 1), weighted by det^-1/2 q^-(k-1)/2. Needs k >= 3 (for the mean); the
    std is infinite for k = 3.
    """
    w, m, scale, dof = _scale_free_mixture(X_ctx, y_ctx, X_q, noise_range, n_grid)
    mean = w @ m
    if dof <= 2:
        return mean, np.full(len(X_q), np.inf)
    second = w @ (scale**2 * dof / (dof - 2) + m**2)
    return mean, np.sqrt(np.maximum(second - mean**2, 0))


def scale_free_cdf(X_ctx, y_ctx, X_q, y_q, noise_range, n_grid=200):
    """CDF of :func:`scale_free_predictive`'s distribution at each query's ``y_q``."""
    w, m, scale, dof = _scale_free_mixture(X_ctx, y_ctx, X_q, noise_range, n_grid)
    return w @ special.stdtr(dof, (np.asarray(y_q)[None] - m) / scale)


def _intercept_predictive_grid(X_ctx, y_ctx, X_q, sigmas):
    """``bayes_predictive(..., s, intercept=True)`` for every s in ``sigmas`` at once, as
    (means, variances) of shape (len(sigmas), n_queries): in the eigenbasis of
    G = Xc^T Xc, S = V diag(s^2 / (s^2 + lam)) V^T, so one eigh serves every sigma."""
    k = len(y_ctx)
    x_mean, y_mean, lam, V, b = _centred_eigh(X_ctx, y_ctx)
    Z = (X_q - x_mean) @ V                                   # (n_queries, d)
    s2 = np.asarray(sigmas, dtype=float)[:, None] ** 2       # (n_grid, 1)
    inv = 1.0 / (s2 + lam)                                   # (n_grid, d)
    means = (inv * b) @ Z.T + y_mean
    var = s2 * (inv @ (Z**2).T) + s2 * (1 + (1 / k if k else 0))
    return means, var


def least_squares(X_ctx, y_ctx, X_q):
    """Minimum-norm least-squares prediction (0 with no context)."""
    if len(y_ctx) == 0:
        return np.zeros(len(X_q))
    return X_q @ np.linalg.lstsq(X_ctx, y_ctx, rcond=None)[0]


def ratio_interval(a, b, level=0.95):
    """mean(a) / mean(b) for paired per-task values (e.g. two answers' squared errors on
    the same tasks) and the half-width of its ``level`` interval (delta method)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    r = a.mean() / b.mean()
    z = NormalDist().inv_cdf(0.5 + level / 2)
    return float(r), float(z * np.std(a - r * b, ddof=1) / np.sqrt(len(a)) / b.mean())


def coverage(y, mean, std, level=0.9):
    """Fraction of ``y`` inside the central ``level`` interval mean +- z * std."""
    z = NormalDist().inv_cdf(0.5 + level / 2)
    return float(np.mean(np.abs(y - mean) <= z * std))


def icl_linear_table(model, schedule, d=5, ks=(0, 1, 2, 3, 5, 8, 10, 15), noise_std=0.1,
                     n_tasks=200, n_queries=5, n_samples=64, seed=0, level=0.9,
                     noise_range=None, **sampler_kw):
    """Rows of {k, mse, bayes_mse, shift_bayes_mse, lsq_mse, ratio, ratio_half_width,
    shift_ratio, coverage, bayes_coverage} per k; ``ratio_half_width`` is that of the 95 %
    interval of ``ratio`` over tasks (:func:`ratio_interval`), ``shift_*`` is against the
    unknown-intercept posterior. With
    ``noise_range`` (the model's training prior) also ``prior_bayes_mse``, ``prior_ratio``
    and ``prior_coverage``, of :func:`noise_marginal_predictive`, ``width_ratio``, the
    median over queries of the model's sample std over that predictive's std, and for
    k >= 4 ``scale_free_bayes_mse`` and ``scale_free_ratio``, of
    :func:`scale_free_predictive`.

    Coverage is that of the central ``level`` interval mean +- z * std of the samples
    (for n = 64 samples, empirical 5 %/95 % quantiles alone would cover only ~0.87 of a
    perfect sampler's draws).
    """
    g = torch.Generator().manual_seed(seed)
    rows = []
    for k in ks:
        Xc, yc, Xq, yq = linear_tasks(n_tasks, k, n_queries, d, noise_std, seed + k)
        s = sample_raw_tasks(model, schedule, *(torch.tensor(a, dtype=torch.float32)
                             for a in (Xc, yc, Xq)), n_samples, g, **sampler_kw).double().numpy()
        mean, std = s.mean(-1), s.std(-1, ddof=1)
        bayes = [bayes_predictive(Xc[i], yc[i], Xq[i], noise_std) for i in range(n_tasks)]
        bm, bs = np.array([b[0] for b in bayes]), np.array([b[1] for b in bayes])
        shift = np.array([bayes_predictive(Xc[i], yc[i], Xq[i], noise_std, intercept=True)[0]
                          for i in range(n_tasks)])
        lsq = np.array([least_squares(Xc[i], yc[i], Xq[i]) for i in range(n_tasks)])
        mse, bayes_mse = float(np.mean((mean - yq) ** 2)), float(np.mean((bm - yq) ** 2))
        shift_mse = float(np.mean((shift - yq) ** 2))
        per_task = [np.mean((m - yq) ** 2, axis=1) for m in (mean, bm)]
        rows.append({"k": k, "mse": mse, "bayes_mse": bayes_mse, "shift_bayes_mse": shift_mse,
                     "lsq_mse": float(np.mean((lsq - yq) ** 2)), "ratio": mse / bayes_mse,
                     "ratio_half_width": ratio_interval(*per_task)[1] if n_tasks > 1 else np.nan,
                     "shift_ratio": mse / shift_mse,
                     "coverage": coverage(yq, mean, std, level),
                     "bayes_coverage": coverage(yq, bm, bs, level)})
        if noise_range is not None and k >= 1:
            prior = [noise_marginal_predictive(Xc[i], yc[i], Xq[i], noise_range)
                     for i in range(n_tasks)]
            pm, ps = np.array([p[0] for p in prior]), np.array([p[1] for p in prior])
            prior_mse = float(np.mean((pm - yq) ** 2))
            rows[-1].update(prior_bayes_mse=prior_mse, prior_ratio=mse / prior_mse,
                            prior_coverage=coverage(yq, pm, ps, level),
                            width_ratio=float(np.median(std / ps)))
        if noise_range is not None and k >= 4:
            free = np.array([scale_free_predictive(Xc[i], yc[i], Xq[i], noise_range)[0]
                             for i in range(n_tasks)])
            free_mse = float(np.mean((free - yq) ** 2))
            rows[-1].update(scale_free_bayes_mse=free_mse, scale_free_ratio=mse / free_mse)
    return rows


def markdown_table(rows):
    """Render :func:`icl_linear_table` rows as a Markdown table."""
    head = ("| k | model MSE | Bayes MSE | least-squares MSE | model / Bayes "
            "| model / unknown-intercept Bayes | 90% coverage |")
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        lines.append(f"| {r['k']} | {r['mse']:.4f} | {r['bayes_mse']:.4f} | {r['lsq_mse']:.4f} "
                     f"| {r['ratio']:.2f} | {r['shift_ratio']:.2f} | {r['coverage']:.3f} |")
    return "\n".join(lines)


@torch.no_grad()
def posterior_mean_ratio(model, schedule, prediction_type, d=5, ks=(2, 5, 7, 10, 15),
                         noise_std=0.1, n_tasks=256, seed=123):
    """Cheap learning-curve probe: MSE of y0_hat from pure noise at t=T, over Bayes.

    At t=T the input y_T carries no information, so the network's y0_hat is its estimate
    of E[y | context, x]; one forward pass per k, no sampling.
    """
    out = {}
    g = torch.Generator().manual_seed(seed)
    for k in ks:
        Xc, yc, Xq, yq = linear_tasks(n_tasks, k, 8, d, noise_std, seed + k)
        s = sample_raw_tasks(model, schedule, *(torch.tensor(a, dtype=torch.float32)
                             for a in (Xc, yc, Xq)), 1, g, sampler="ddim", n_steps=1,
                             prediction_type=prediction_type)[..., 0].double().numpy()
        bm = np.array([bayes_predictive(Xc[i], yc[i], Xq[i], noise_std)[0] for i in range(n_tasks)])
        out[k] = float(np.mean((s - yq) ** 2) / np.mean((bm - yq) ** 2))
    return out
