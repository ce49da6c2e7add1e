"""The benchmark's reference answers: exact Bayes posterior and least squares."""

from statistics import NormalDist

import numpy as np
import pytest
import torch
from scipy.stats import norm

from skdiffusion.evaluation import (
    _evidence_terms,
    _noise_grid,
    _scale_free_mixture,
    bayes_predictive,
    coverage,
    least_squares,
    linear_tasks,
    log_evidence,
    noise_marginal_cdf,
    noise_marginal_predictive,
    noise_marginal_samples,
    noise_posterior,
    ratio_interval,
    scale_free_cdf,
    scale_free_predictive,
)
from skdiffusion.inference import sample_raw_tasks


def test_bayes_predictive_is_calibrated_and_beats_least_squares():
    Xc, yc, Xq, yq = linear_tasks(400, 6, 5, 5, 0.1, seed=0)
    z, bayes_err, lsq_err = [], [], []
    for i in range(400):
        m, s = bayes_predictive(Xc[i], yc[i], Xq[i], 0.1)
        z.append((yq[i] - m) / s)
        bayes_err.append((yq[i] - m) ** 2)
        lsq_err.append((yq[i] - least_squares(Xc[i], yc[i], Xq[i])) ** 2)
    z = np.concatenate(z)
    assert abs(z.std() - 1) < 0.05 and abs(z.mean()) < 0.1   # 2000 standardized residuals
    assert np.mean(bayes_err) < np.mean(lsq_err)              # k = 6 near d = 5


def test_no_context_means_prior():
    m, s = bayes_predictive(np.zeros((0, 3)), np.zeros(0), np.eye(3), 0.1)
    np.testing.assert_allclose(m, 0)
    np.testing.assert_allclose(s, np.sqrt(1 + 0.01))
    np.testing.assert_allclose(least_squares(np.zeros((0, 3)), np.zeros(0), np.eye(3)), 0)


def test_unknown_intercept_posterior_is_the_flat_prior_limit():
    """intercept=True equals the zero-intercept posterior on features [c, x] with a
    nearly flat N(0, c^2) prior on the intercept's coefficient (c large), and is
    shift-invariant in x and y."""
    Xc, yc, Xq, _ = linear_tasks(1, 4, 3, 3, 0.3, seed=5)
    Xc, yc, Xq = Xc[0], yc[0], Xq[0]
    m, s = bayes_predictive(Xc, yc, Xq, 0.3, intercept=True)
    c = 1e4
    aug = lambda X: np.hstack([np.full((len(X), 1), c), X])  # noqa: E731
    m_ref, s_ref = bayes_predictive(aug(Xc), yc, aug(Xq), 0.3)
    np.testing.assert_allclose(m, m_ref, rtol=1e-5)
    np.testing.assert_allclose(s, s_ref, rtol=1e-5)
    m2, s2 = bayes_predictive(Xc + 7.0, yc - 3.0, Xq + 7.0, 0.3, intercept=True)
    np.testing.assert_allclose(m2, m - 3.0, rtol=1e-10)
    np.testing.assert_allclose(s2, s, rtol=1e-10)


def test_log_evidence_is_the_flat_intercept_limit():
    """Differences across sigma equal those of the exact Gaussian evidence with a
    N(0, c^2) intercept, c = 1e3 (the constant in c cancels; the rest is O(1/c^2), and
    a larger c loses digits to cancellation)."""
    Xc, yc, _, _ = linear_tasks(1, 5, 1, 3, 0.3, seed=7)
    Xc, yc = Xc[0], yc[0]
    sig = np.array([0.05, 0.3, 2.0])
    c = 1e3

    def exact(s):
        cov = c**2 + Xc @ Xc.T + s**2 * np.eye(len(yc))
        return -0.5 * (np.linalg.slogdet(2 * np.pi * cov)[1] + yc @ np.linalg.solve(cov, yc))

    ref = np.array([exact(s) for s in sig])
    np.testing.assert_allclose(np.diff(log_evidence(Xc, yc, sig)), np.diff(ref), rtol=0, atol=1e-5)


def test_noise_marginal_predictive_reduces_and_integrates():
    Xc, yc, Xq, _ = linear_tasks(1, 6, 3, 3, 0.3, seed=8)
    Xc, yc, Xq = Xc[0], yc[0], Xq[0]
    m, s = noise_marginal_predictive(Xc, yc, Xq, (0.3, 0.3))   # a point prior
    m_ref, s_ref = bayes_predictive(Xc, yc, Xq, 0.3, intercept=True)
    np.testing.assert_allclose(m, m_ref, rtol=1e-12)
    np.testing.assert_allclose(s, s_ref, rtol=1e-12)
    # a finer grid changes nothing: the integral over sigma has converged
    m1, s1 = noise_marginal_predictive(Xc, yc, Xq, (0.01, 5.0))
    m2, s2 = noise_marginal_predictive(Xc, yc, Xq, (0.01, 5.0), n_grid=2000)
    np.testing.assert_allclose(m1, m2, rtol=1e-4)
    np.testing.assert_allclose(s1, s2, rtol=1e-4)


def test_noise_marginal_predictive_is_the_mixture_of_bayes_predictives():
    """The one-eigendecomposition computation equals the mixture written out with
    :func:`bayes_predictive` at every grid sigma, also with no context at all."""
    Xc, yc, Xq, _ = linear_tasks(1, 5, 4, 3, 0.5, seed=9)
    for k in (5, 2, 0):
        sigmas, w = noise_posterior(Xc[0, :k], yc[0, :k], (0.05, 3.0), n_grid=7)
        parts = [bayes_predictive(Xc[0, :k], yc[0, :k], Xq[0], s, intercept=True) for s in sigmas]
        m, v = np.array([p[0] for p in parts]), np.array([p[1] ** 2 for p in parts])
        mean, std = noise_marginal_predictive(Xc[0, :k], yc[0, :k], Xq[0], (0.05, 3.0), n_grid=7)
        np.testing.assert_allclose(mean, w @ m, rtol=1e-10)
        np.testing.assert_allclose(std**2, w @ (v + m**2) - (w @ m) ** 2, rtol=1e-8)


@pytest.mark.parametrize("antithetic", [False, True])
def test_noise_marginal_samples_follow_the_mixture(antithetic):
    """Draws have the mixture's CDF at each query (3 points, 1 feature, so one residual
    degree of freedom: kurtosis about 80, far from Gaussian) and, sharing one noise
    cell, its dependence across queries; antithetic pairs are such draws too, mirrored
    about the mean of their shared cell."""
    Xc, yc, Xq, _ = linear_tasks(1, 3, 2, 1, 0.1, seed=4)
    sigmas, w = noise_posterior(Xc[0], yc[0], (0.01, 5.0))
    parts = [bayes_predictive(Xc[0], yc[0], Xq[0], s, intercept=True) for s in sigmas]
    m, sd = np.array([p[0] for p in parts]), np.array([p[1] for p in parts])  # (grid, 2)
    draws = noise_marginal_samples(Xc[0], yc[0], Xq[0], (0.01, 5.0), 100_000,
                                   np.random.default_rng(0), antithetic=antithetic)
    if antithetic:
        mid = (draws[0::2] + draws[1::2]) / 2                                # (50_000, 2)
        gap = np.abs(mid[:, None, :] - m[None]).max(axis=2).min(axis=1)      # nearest cell
        assert gap.max() < 1e-9 and np.all(draws[0::2] != draws[1::2])
        with pytest.raises(ValueError, match="odd"):
            noise_marginal_samples(Xc[0], yc[0], Xq[0], (0.01, 5.0), 3,
                                   np.random.default_rng(0), antithetic=True)
    for y in np.quantile(draws, (0.05, 0.25, 0.5, 0.75, 0.95), axis=0):     # (2,) each
        cdf = [w @ [NormalDist(mi, si).cdf(y[q]) for mi, si in zip(m[:, q], sd[:, q])]
               for q in range(2)]
        assert np.allclose(noise_marginal_cdf(Xc[0], yc[0], Xq[0], y, (0.01, 5.0)), cdf,
                           rtol=0, atol=1e-12)
        assert np.abs(np.mean(draws <= y, axis=0) - cdf).max() < 0.006  # sd <= 0.0016
    # both queries far out (|y - median| above its median): the mixture's joint
    # probability, not the product of its marginals, since a draw's noise cell is shared
    med = np.median(draws, axis=0)
    c = np.median(np.abs(draws - med), axis=0)
    far = np.array([[1 - NormalDist(mi, si).cdf(mq + cq) + NormalDist(mi, si).cdf(mq - cq)
                     for mi, si in zip(m[:, q], sd[:, q])]
                    for q, (mq, cq) in enumerate(zip(med, c))])                  # (2, grid)
    joint, product = w @ (far[0] * far[1]), (w @ far[0]) * (w @ far[1])
    assert joint - product > 0.05
    assert abs(np.mean((np.abs(draws - med) > c).all(axis=1)) - joint) < 0.006


def test_noise_marginal_predictive_is_calibrated_on_its_prior():
    """On tasks whose intercept and noise are drawn as the prior says, the exact mixture
    predictive's central 90 % interval (from its mixture CDF at y, the PIT) covers 0.9,
    also on the low- and the high-noise half alone: weighting by the prior instead of
    the evidence would cover 1.0 and 0.81 there."""
    rng = np.random.default_rng(0)
    d, k = 3, 8
    pit, noise = [], np.exp(rng.uniform(np.log(0.01), np.log(5.0), 600))
    for sd in noise:
        X = rng.standard_normal((k + 1, d))
        y = 3.0 * rng.standard_normal() + X @ rng.standard_normal(d) + sd * rng.standard_normal(k + 1)
        sigmas, w = noise_posterior(X[:k], y[:k], (0.01, 5.0), n_grid=100)
        parts = [bayes_predictive(X[:k], y[:k], X[k:], s, intercept=True) for s in sigmas]
        pit.append(w @ [NormalDist(m[0], s[0]).cdf(y[k]) for m, s in parts])
    inside = (np.array(pit) > 0.05) & (np.array(pit) < 0.95)
    low = noise < np.median(noise)
    for part in (inside, inside[low], inside[~low]):    # 600 / 300 draws: sd 0.012 / 0.017
        assert abs(part.mean() - 0.9) < 0.05


def test_noise_marginal_predictive_needs_residual_dof_to_know_the_noise():
    """With many residual degrees of freedom the data pins the noise down and the
    prior's answer matches the known-noise one; at k = d + 2 it cannot, and shrinks
    more than noise 0.1 tasks deserve."""
    def mse_ratio(k, d):
        Xc, yc, Xq, yq = linear_tasks(200, k, 1, d, 0.1, seed=k)
        m = [noise_marginal_predictive(Xc[i], yc[i], Xq[i], (0.01, 5.0))[0] for i in range(200)]
        ref = [bayes_predictive(Xc[i], yc[i], Xq[i], 0.1, intercept=True)[0] for i in range(200)]
        return np.mean((np.ravel(m) - yq.ravel()) ** 2) / np.mean((np.ravel(ref) - yq.ravel()) ** 2)

    assert abs(mse_ratio(40, 2) - 1) < 0.05
    assert mse_ratio(7, 5) > 1.3


def test_icl_linear_table_reports_the_priors_bayes_answer():
    from skdiffusion.denoiser import SetDenoiser
    from skdiffusion.diffusion import NoiseSchedule
    from skdiffusion.evaluation import icl_linear_table
    sch = NoiseSchedule(20)
    torch.manual_seed(0)
    model = SetDenoiser(max_features=2, n_layer=1, n_embd=16, n_head=2, abar=sch.abar).eval()
    rows = icl_linear_table(model, sch, d=2, ks=(0, 3, 4), n_tasks=4, n_queries=2, n_samples=4,
                            noise_range=(0.01, 5.0), n_steps=5)
    assert "prior_ratio" not in rows[0]                   # no context: no posterior
    assert "scale_free_ratio" not in rows[1]              # k = 3: no finite MSE
    Xc, yc, Xq, yq = linear_tasks(4, 4, 2, 2, 0.1, seed=4)
    free = np.array([scale_free_predictive(Xc[i], yc[i], Xq[i], (0.01, 5.0))[0]
                     for i in range(4)])
    free_mse = np.mean((free - yq) ** 2)
    assert rows[2]["scale_free_bayes_mse"] == pytest.approx(free_mse)
    assert rows[2]["scale_free_ratio"] == pytest.approx(rows[2]["mse"] / free_mse)
    r = rows[1]
    assert r["prior_ratio"] == pytest.approx(r["mse"] / r["prior_bayes_mse"])
    Xc, yc, Xq, yq = linear_tasks(4, 3, 2, 2, 0.1, seed=3)  # the table's tasks at k = 3
    m, s = np.array([noise_marginal_predictive(Xc[i], yc[i], Xq[i], (0.01, 5.0))
                     for i in range(4)]).transpose(1, 0, 2)
    assert r["prior_bayes_mse"] == pytest.approx(np.mean((m - yq) ** 2))
    assert r["prior_coverage"] == coverage(yq, m, s)
    g = torch.Generator().manual_seed(0)                   # the table's draws, k = 0 then 3
    for k in (0, 3):
        draws = sample_raw_tasks(model, sch, *(torch.tensor(a, dtype=torch.float32) for a in
                                 linear_tasks(4, k, 2, 2, 0.1, seed=k)[:3]), 4, g, n_steps=5)
    std = draws.double().numpy().std(-1, ddof=1)
    assert r["width_ratio"] == pytest.approx(np.median(std / s))
    mean = draws.double().numpy().mean(-1)
    bm = np.array([bayes_predictive(Xc[i], yc[i], Xq[i], 0.1)[0] for i in range(4)])
    ratio, half = ratio_interval(((mean - yq) ** 2).mean(1), ((bm - yq) ** 2).mean(1))
    assert r["ratio"] == pytest.approx(ratio) and r["ratio_half_width"] == pytest.approx(half)


def test_ratio_interval_is_the_delta_method():
    """With a constant denominator the interval is that of a mean: z sd(a) / (sqrt(n) b);
    paired errors that move together give a narrower interval than independent ones."""
    a = np.random.default_rng(0).exponential(size=400)
    r, half = ratio_interval(a, np.full(400, 2.0))
    assert r == pytest.approx(a.mean() / 2)
    assert half == pytest.approx(1.959964 * a.std(ddof=1) / 20 / 2, rel=1e-6)
    assert ratio_interval(a, np.full(400, 2.0), level=0.5)[1] < half
    b = a + np.random.default_rng(1).exponential(size=400) * 0.1
    assert ratio_interval(a, b)[1] < ratio_interval(a, np.random.default_rng(2).permutation(b))[1]


def _scale_free_by_quadrature(X, y, Q, y_q, noise_range, n_grid):
    """:func:`scale_free_predictive`'s mean, std and CDF by brute force: the Gaussians of
    :func:`bayes_predictive` at data s y for 1,201 log-spaced s and every noise cell,
    mapped back by 1 / s and weighted by p(s y | sigma) s^(k-1) per log cell of s."""
    k, (lo, hi) = len(y), np.log(noise_range)
    sig = np.exp(lo + (np.arange(n_grid) + 0.5) * (hi - lo) / n_grid)
    logw, m, sd = [], [], []
    for s in np.exp(np.linspace(np.log(1e-3), np.log(1e3), 1201)):
        logw.append(log_evidence(X, s * y, sig) + (k - 1) * np.log(s))
        parts = np.array([bayes_predictive(X, s * y, Q, n, intercept=True) for n in sig]) / s
        m.append(parts[:, 0])
        sd.append(parts[:, 1])
    logw, m, sd = np.concatenate(logw), np.concatenate(m), np.concatenate(sd)
    w = np.exp(logw - logw.max())
    w /= w.sum()
    mean = w @ m
    return mean, np.sqrt(w @ (sd**2 + m**2) - mean**2), w @ norm.cdf((y_q - m) / sd)


@pytest.mark.parametrize("d, k", [(2, 5), (10, 12)])
def test_scale_free_predictive_integrates_the_scale_of_y_out(d, k):
    """The closed form (a Student t mixture) equals the integral over the unknown scale by
    quadrature, and is equivariant: y -> a y + b maps mean to a mean + b, std to a std."""
    Xc, yc, Xq, yq = linear_tasks(1, k, 3, d, 0.1, seed=k)
    X, y, Q = Xc[0], yc[0], Xq[0]
    mean, std = scale_free_predictive(X, y, Q, (0.01, 5.0), n_grid=20)
    ref_mean, ref_std, ref_cdf = _scale_free_by_quadrature(X, y, Q, yq[0], (0.01, 5.0), 20)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(std, ref_std, rtol=2e-3)     # t tails past s = 1e-3 cut off
    np.testing.assert_allclose(scale_free_cdf(X, y, Q, yq[0], (0.01, 5.0), n_grid=20),
                               ref_cdf, atol=1e-6)
    mean2, std2 = scale_free_predictive(X, 3.0 * y - 2.0, Q, (0.01, 5.0), n_grid=20)
    np.testing.assert_allclose(mean2, 3.0 * mean - 2.0, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(std2, 3.0 * std, rtol=1e-9)


def test_scale_free_predictive_is_calibrated_on_its_prior():
    """On 8,000 tasks drawn from the prior (d = 2, k = 4: one residual degree of freedom,
    t with 3), 5.0 % of the PIT falls in each 5 % tail (sd 0.24 %); weighting the scale by
    s^(k-3) or s^(k-1) instead of the polar Jacobian's s^(k-2) puts 3.9 % or 6.1 % there."""
    rng = np.random.default_rng(1)
    d, k = 2, 4
    pit = []
    for sd in np.exp(rng.uniform(np.log(0.01), np.log(5.0), 8000)):
        X = rng.standard_normal((k + 1, d))
        y = 3.0 * rng.standard_normal() + X @ rng.standard_normal(d) + sd * rng.standard_normal(k + 1)
        pit.append(scale_free_cdf(X[:k], y[:k], X[k:], y[k:], (0.01, 5.0), n_grid=50)[0])
    pit = np.array(pit)
    assert abs(np.mean(pit < 0.05) - 0.05) < 0.008
    assert abs(np.mean(pit > 0.95) - 0.05) < 0.008


def test_scale_free_mean_is_best_in_standardized_units_not_in_ys():
    """Its mean minimizes the squared error in standardized units (the units a model fed
    standardized y is trained in), not in y's units: there the optimum weights each noise
    cell by a further E[s^2 | cell] = (k - 1) / q, since a task's error counts s^2 times.
    On 8,000 prior tasks (d = 2, k = 4) each wins in its own units by 5-6 standard errors."""
    rng = np.random.default_rng(2)
    d, k, prior = 2, 4, (0.01, 5.0)
    gain_std, gain_y = [], []  # error of the reweighted mean minus the scale-free mean's
    for sd in np.exp(rng.uniform(np.log(prior[0]), np.log(prior[1]), 8000)):
        X = rng.standard_normal((k + 1, d))
        y = X @ rng.standard_normal(d) + sd * rng.standard_normal(k + 1)
        s = y[:k].std()
        seen, seen_q = (y[:k] - y[:k].mean()) / s, (y[k:] - y[:k].mean()) / s
        w, m, _, _ = _scale_free_mixture(X[:k], seen, X[k:], prior, 50)
        w_y = w / _evidence_terms(X[:k], seen, _noise_grid(prior, 50))[1]
        diff = ((w_y / w_y.sum()) @ m - seen_q) ** 2 - (w @ m - seen_q) ** 2
        gain_std.append(diff.mean())
        gain_y.append(s**2 * diff.mean())
    np.testing.assert_allclose(w @ m, scale_free_predictive(X[:k], seen, X[k:], prior, 50)[0])
    for gain, sign in ((np.array(gain_std), 1), (np.array(gain_y), -1)):
        assert sign * gain.mean() > 4 * gain.std() / np.sqrt(len(gain))


def test_scale_free_predictive_needs_three_points_and_four_for_a_std():
    Xc, yc, Xq, _ = linear_tasks(1, 3, 2, 2, 0.1, seed=0)
    mean, std = scale_free_predictive(Xc[0], yc[0], Xq[0], (0.01, 5.0))
    assert np.all(np.isfinite(mean)) and np.all(np.isinf(std))
    with pytest.raises(ValueError, match="at least 3 context points"):
        scale_free_predictive(Xc[0][:2], yc[0][:2], Xq[0], (0.01, 5.0))
