"""How far below the ARD GP the bench's function families let an estimator go.

The bench's GP-draw, heteroscedastic and bimodal tasks (``skdiffusion.bench.predictive``)
are scored here by two answers built from the law that made them, beside the ARD GP (the
bench's reference, refitted on the same tasks):

* known hyperparameters: Bayes' answer when f's kernel and the noise law of each task
  are known and y's shift and scale are not (flat prior on the shift, 1 / a on the scale
  a: the answer of an estimator that standardizes y, as this one does, cf.
  ``bar_ceiling.py``). Its predictive is a Student t. It knows more than any estimator
  can, so it bounds the CRPS of every one from below;
* the prior's average: the same answer averaged over the prior's own hyperparameters
  (kernel, lengthscales, relevant features, linear part, noise level and, for
  heteroscedastic tasks, the noise direction), by importance sampling: ``--draws`` draws
  of the prior on the task's own inputs, each weighted by its evidence. It is computed
  from the context and the query inputs alone, so its CRPS is one that an estimator
  reaches: that of a model meta-trained to perfection on this prior, up to the sampling
  error, which can only cost.

One approximation enters both: the prior's f is a GP draw standardized over the task's
points (context and queries), and its prior is taken as a Gaussian: for the first answer
with the standardized draw's covariance (by Monte Carlo), so that it is Bayes' answer only
up to that approximation, a bound from below only approximately; for the second, cheaper,
with that covariance to first order, (N - 1) P K P / tr(P K P) (P centres over the N
points), which makes it no less a procedure an estimator could run.
On bimodal tasks Bayes' answer sums over the 2^k branch assignments of the context, so
there is no first answer, and the prior's average takes, for each draw, a mean-field
answer (f and the branches independent under it, fitted by coordinate steps from no
branch preferred) weighted by its evidence lower bound: no longer Bayes', but still a procedure an estimator could run.

CRPS of the two answers by Monte Carlo from their predictive (``--samples`` draws per
query); each answer's ratio to the ARD GP's mean CRPS per cell and the geometric mean
over cells, each with its 90 % paired bootstrap band over tasks; with ``--out``, the
per-task CRPS also go to a JSON file beside it. Seeds are the bench's: with ``--tasks 8``
the tasks, and the ARD GP's scores on them, are the bench report's (with more, the tasks
are other draws: the prior draws its hyperparameters batch by batch).

    python benchmarks/family_ceiling.py                    # the bench's 8 tasks per cell
    python benchmarks/family_ceiling.py --tasks 24 --draws 4000 --families gp,heteroscedastic \
        --out benchmarks/results/family_ceiling.md
    python benchmarks/family_ceiling.py --tasks 24 --draws 4000 --families bimodal \
        --out benchmarks/results/family_ceiling_bimodal.md

``prior_average`` is the second answer as a method of ``small_real.py`` (real data).
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import scoringrules
import torch

from skdiffusion.bench.baselines import GP
from skdiffusion.bench.predictive import FAMILIES, NOISE_OF, make_function_tasks
from skdiffusion.bench.real import fit_predict_quietly, methods, score
from skdiffusion.priors import Functions

SHIFT_VARIANCE = 1e3  # the flat prior on y's shift, as a constant kernel of this variance
COVERED = ("gp", "heteroscedastic", "bimodal")
COLUMNS = ("ARD GP", "known hyperparameters", "the prior's average")


def moment_covariance(K):
    """(..., N, N): the covariance, to first order, of a draw of N(0, K) standardized to
    zero mean and unit sample variance over its N points."""
    row = K.mean(-1, keepdims=True)
    PKP = K - row - np.swapaxes(row, -1, -2) + row.mean(-2, keepdims=True)   # P K P
    return (K.shape[-1] - 1) * PKP / np.trace(PKP, axis1=-2, axis2=-1)[..., None, None]


def sampled_covariance(K, rng, n_draws=20_000):
    """(N, N): the covariance of n_draws draws of N(0, K) standardized as the prior does."""
    f = rng.standard_normal((n_draws, K.shape[0])) @ np.linalg.cholesky(K).T
    f = (f - f.mean(1, keepdims=True)) / f.std(1, ddof=1, keepdims=True)
    return f.T @ f / n_draws


def student_answer(C, sd, y_context):
    """Bayes' answer for y = a (f + e) + b at the queries, f ~ N(0, C), e ~ N(0, sd^2)
    independent, flat prior on b and 1 / a on a, given the first k = len(y_context)
    points: per hyperparameter draw (leading axis S) the log evidence (up to a constant
    shared by all draws), the Student t's location and scale at the N - k queries, and its
    degrees of freedom k - 1."""
    k = len(y_context)
    S, N = sd.shape
    Sigma = C + sd[:, :, None] ** 2 * np.eye(N) + SHIFT_VARIANCE
    L = np.linalg.cholesky(Sigma[:, :k, :k])
    a = np.linalg.solve(L, np.broadcast_to(y_context[:, None], (S, k, 1)))[..., 0]
    B = np.linalg.solve(L, Sigma[:, :k, k:])
    dof = k - 1
    q = (a ** 2).sum(1)
    log_evidence = -np.log(np.diagonal(L, axis1=1, axis2=2)).sum(1) - 0.5 * dof * np.log(q)
    loc = np.einsum("si,siq->sq", a, B)
    var = np.diagonal(Sigma[:, k:, k:], axis1=1, axis2=2) - (B ** 2).sum(1)
    return log_evidence, loc, np.sqrt(np.clip(var, 1e-12, None) * q[:, None] / dof), dof


def bimodal_answer(C, sigma, gap, y_context, iters=15):
    """For y = a (f + gap b + sigma e) + shift, b = +-1 per point with probability 1/2,
    given the first k = len(y_context) points (standardized): per draw (leading axis S;
    sigma, gap (S,)) a mean-field answer, q(f) q(b) fitted by iters coordinate steps,
    with a = (1 + gap^2 + sigma^2)^-1/2 (y's sd over f's) and a flat shift: its evidence
    lower bound, and at the queries the mean and variance of f and the branches' offset a
    gap and noise sd a sigma (the answer: 1/2 N(m -+ a gap, v + (a sigma)^2))."""
    k = len(y_context)
    a = 1 / np.sqrt(1 + gap ** 2 + sigma ** 2)
    g, s2 = a * gap, (a * sigma) ** 2
    K = a[:, None, None] ** 2 * C + SHIFT_VARIANCE
    Kcc, Kqc = K[:, :k, :k], K[:, k:, :k]
    Ainv = np.linalg.inv(Kcc + s2[:, None, None] * np.eye(k))
    mu = np.zeros((len(a), k))                                        # E b under q(b)
    for step in range(iters + 1):
        alpha = np.einsum("sij,sj->si", Ainv, y_context - g[:, None] * mu)
        m = np.einsum("sij,sj->si", Kcc, alpha)                        # E f under q(f)
        if step < iters:
            mu = np.tanh(g[:, None] * (y_context - m) / s2[:, None])
    AK = Ainv @ Kcc
    v = np.diagonal(Kcc - Kcc @ AK, axis1=1, axis2=2)                 # Var f under q(f)
    resid = (y_context - g[:, None] * mu - m) ** 2 + v + g[:, None] ** 2 * (1 - mu ** 2)
    expected = -0.5 * k * np.log(2 * np.pi * s2) - 0.5 * resid.sum(1) / s2
    # KL(q(f) || p(f)) = (tr K^-1 V + m' K^-1 m - k + log |K| / |V|) / 2, V = K - K A^-1 K:
    # tr K^-1 V = k - tr A^-1 K and |K| / |V| = |A| / s2^k
    kl_f = 0.5 * (k - np.trace(AK, axis1=1, axis2=2) + (alpha * m).sum(1) - k
                  - np.linalg.slogdet(Ainv)[1] - k * np.log(s2))
    p = np.clip((1 + mu) / 2, 1e-300, 1)
    q = np.clip((1 - mu) / 2, 1e-300, 1)
    entropy_b = -(p * np.log(p) + q * np.log(q)).sum(1)
    elbo = expected - kl_f - k * np.log(2) + entropy_b
    loc = np.einsum("sqi,si->sq", Kqc, alpha)
    var = np.diagonal(K[:, k:, k:], axis1=1, axis2=2) - np.einsum("sqi,sij,sqj->sq", Kqc, Ainv, Kqc)
    return elbo, loc, np.clip(var, 1e-12, None), g, np.sqrt(s2)


def _standard(dof, rng, size):
    """Draws of the standard Student t with dof degrees of freedom (None: Gaussian)."""
    return rng.standard_normal(size) if dof is None else rng.standard_t(dof, size=size)


def crps_student_mixture(y, loc, scale, weights, dof, rng, n_samples):
    """CRPS at each query of the mixture over draws (rows of loc, scale (S, q); weights
    (S,)) of Student t's (dof None: Gaussians), from n_samples draws (the bench's "fair"
    ensemble estimator, unbiased for the mixture, computed from the sorted draws)."""
    comp = rng.choice(len(weights), size=n_samples, p=weights)
    X = loc[comp] + scale[comp] * _standard(dof, rng, (n_samples, 1))
    return scoringrules.crps_ensemble(y, X.T, estimator="pwm")  # "fair"'s value, O(n log n)


def hyperprior_answer(family, x, y_context, n_draws, seed, chunk=500):
    """The prior's average: weights, locations and scales of the mixture's components
    (Student t's with dof degrees of freedom; for bimodal tasks Gaussians, dof None, two
    per draw) from n_draws hyperparameter draws of the bench's prior on the inputs x
    (N, d), dof, and the effective number of draws."""
    prior = Functions(families={"gp": 1.0}, noise_weights={NOISE_OF[family]: 1.0})
    g = torch.Generator().manual_seed(seed)
    centre, spread = y_context.mean(), y_context.std()
    parts = []
    for n in np.diff(np.r_[0:n_draws:chunk, n_draws]):
        truth = {}
        prior.sample_y(torch.from_numpy(x).expand(int(n), *x.shape), g, truth)
        C = moment_covariance(truth["cov"].numpy())
        if family == "bimodal":
            sigma, gap = (truth[key].double().numpy()[:, 0] for key in ("sigma", "gap"))
            parts.append(bimodal_answer(C, sigma, gap, (y_context - centre) / spread))
        else:
            parts.append(student_answer(C, truth["sd"].double().numpy(), y_context))
    log_weight, loc, scale = (np.concatenate(p) for p in list(zip(*parts))[:3])
    w = np.exp(log_weight - log_weight.max())
    w /= w.sum()
    n_eff = 1 / (w ** 2).sum()
    if family != "bimodal":
        return w, loc, scale, parts[0][3], n_eff
    offset, noise = (np.concatenate(p)[:, None] for p in list(zip(*parts))[3:])
    sd = np.sqrt(scale + noise ** 2) * spread                         # scale holds Var f here
    loc = np.concatenate([loc - offset, loc + offset]) * spread + centre
    return np.r_[w, w] / 2, loc, np.concatenate([sd, sd]), None, n_eff


def prior_average(family="gp", n_draws=2000, n_samples=256, seed=0):
    """The prior's average as a ``fit_predict(X, y, X_test) -> (mean, sd, samples)`` of
    the bench (``benchmarks/small_real.py``): inputs standardized by the training rows, as
    the model standardizes them; samples of its Student t mixture, n_samples per row."""
    def fit_predict(X, y, X_test):
        mu, sd = X.mean(0), X.std(0)
        x = (np.r_[X, X_test] - mu) / np.where(sd > 0, sd, 1.0)
        w, loc, scale, dof, _ = hyperprior_answer(family, x, (y - y.mean()) / y.std(),
                                                  n_draws, seed, chunk=250)
        rng = np.random.default_rng(seed)
        comp = rng.choice(len(w), size=n_samples, p=w)
        draws = (loc[comp] + scale[comp] * _standard(dof, rng, (n_samples, 1))).T
        draws = draws * y.std() + y.mean()
        return draws.mean(1), draws.std(1), draws
    return fit_predict


def cell(family, fi, d, k, args):
    """Per-task mean CRPS of the ARD GP, the known-hyperparameter answer and the prior's
    average, and the median effective number of draws."""
    truth = {}
    X, y = make_function_tasks(family, args.tasks, k, d, args.queries,
                               7919 * fi + 31 * d + k, truth)
    gp_fit = methods({})[GP]
    rng = np.random.default_rng(1000 * fi + 31 * d + k)
    out, ess = np.empty((args.tasks, 3)), []
    for t in range(args.tasks):
        yc, yq = y[t, :k], y[t, k:]
        out[t, 0] = score(yq, *fit_predict_quietly(gp_fit, X[t, :k], yc, X[t, k:]))["crps"]
        out[t, 1] = np.nan                      # bimodal: Bayes' answer sums over 2^k branches
        if family != "bimodal":
            C = sampled_covariance(truth["cov"][t].numpy(), rng)
            _, loc, scale, dof = student_answer(C[None], truth["sd"][t:t + 1].double().numpy(), yc)
            out[t, 1] = crps_student_mixture(yq, loc, scale, np.ones(1), dof, rng, args.samples).mean()
        w, loc, scale, dof, n_eff = hyperprior_answer(family, X[t], yc, args.draws,
                                                      seed=10_007 * t + 7 * k + d)
        out[t, 2] = crps_student_mixture(yq, loc, scale, w, dof, rng, args.samples).mean()
        ess.append(n_eff)
    return out, float(np.median(ess))


def band_text(cells, col, rng):
    if np.isnan(cells[0][:, col]).any():
        return "-"
    return "{:.3f} [{:.3f}, {:.3f}]".format(*geometric_band(cells, col, rng))


def geometric_band(cells, col, rng, n_boot=2000):
    """Geometric mean over cells of mean CRPS (column col) / the GP's, and its 90 %
    paired bootstrap band (tasks resampled within each cell)."""
    ratio = lambda c, idx: c[idx, col].mean() / c[idx, 0].mean()  # noqa: E731
    point = np.exp(np.mean([np.log(ratio(c, slice(None))) for c in cells]))
    boots = [np.exp(np.mean([np.log(ratio(c, rng.integers(0, len(c), len(c)))) for c in cells]))
             for _ in range(n_boot)]
    return point, *np.percentile(boots, [5, 95])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default=",".join(COVERED))
    p.add_argument("--ds", default="1,3,5")
    p.add_argument("--ks", default="10,30,100")
    p.add_argument("--tasks", type=int, default=8, help="tasks per cell (the bench: 8)")
    p.add_argument("--queries", type=int, default=25)
    p.add_argument("--draws", type=int, default=2000, help="hyperparameter draws per task")
    p.add_argument("--samples", type=int, default=4000, help="Monte Carlo draws for CRPS")
    p.add_argument("--out", help="also write the tables to this markdown file")
    args = p.parse_args()
    families = args.families.split(",")
    unknown = set(families) - set(COVERED)
    if unknown:
        p.error(f"families {sorted(unknown)} are not covered; choose from {COVERED}")
    ds, ks = [int(v) for v in args.ds.split(",")], [int(v) for v in args.ks.split(",")]
    t0 = time.time()
    rng = np.random.default_rng(0)
    lines, summary, records = [], [], []
    for family in families:
        fi = FAMILIES.index(family)
        cells = []
        for d in ds:
            for k in ks:
                c, ess = cell(family, fi, d, k, args)
                cells.append(c)
                records.append({"family": family, "d": d, "k": k, "effective_draws": ess,
                                "task_crps": dict(zip(COLUMNS, c.T.tolist()))})
                lines.append(f"| {family} | {d} | {k} | {c[:, 0].mean():.4f} | " + " | ".join(
                    band_text([c], col, rng) for col in (1, 2)) + f" | {ess:.0f} |")
                print(lines[-1], flush=True)
        summary.append(f"| {family} | " + " | ".join(band_text(cells, col, rng)
                                                     for col in (1, 2)) + " |")
    text = (f"`python benchmarks/family_ceiling.py {' '.join(sys.argv[1:])}` "
            f"({time.time() - t0:.0f} s): {args.tasks} tasks x {args.queries} queries per "
            f"cell, {args.draws} hyperparameter draws per task; CRPS over the ARD GP's, "
            "geometric mean over the cells with its 90 % paired bootstrap band.\n\n"
            "| family | known hyperparameters | the prior's average |\n|---|---|---|\n"
            + "\n".join(summary) + "\n\nPer cell (the ARD GP's mean CRPS; the ratios of "
            "mean CRPS with their 90 % bands; the median effective number of draws of the "
            "prior's average):\n\n"
            "| family | d | k | ARD GP CRPS | known hyperparameters | the prior's average "
            "| effective draws |\n|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n")
    print("\n" + text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
            json.dump(records, f)


if __name__ == "__main__":
    main()
