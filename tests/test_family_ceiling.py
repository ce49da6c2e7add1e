"""The answers of benchmarks/family_ceiling.py: exact checks of their maths."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import scoringrules
from scipy import integrate, stats

SPEC = importlib.util.spec_from_file_location(
    "family_ceiling", Path(__file__).resolve().parents[1] / "benchmarks" / "family_ceiling.py")
fc = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(fc)


def _rbf(x, ls):
    return np.exp(-0.5 * (x[:, None] - x[None]) ** 2 / ls ** 2)


def _by_quadrature(Sigma0, y):
    """log of the integral over the shift b (flat) and the scale a (prior 1 / a) of
    N(y; b 1, a^2 Sigma0), by quadrature (b integrated in closed form, a numerically)."""
    k = len(y)
    inv = np.linalg.inv(Sigma0)
    one = np.ones(k)
    s = one @ inv @ one
    q = y @ inv @ y - (one @ inv @ y) ** 2 / s                      # after the shift's maximum
    _, logdet = np.linalg.slogdet(Sigma0)

    def integrand(log_a):                                           # da / a = d log a
        a2 = np.exp(2 * log_a)
        return np.exp(-0.5 * (k - 1) * np.log(2 * np.pi * a2) - 0.5 * logdet - 0.5 * np.log(s)
                      - 0.5 * q / a2)
    return np.log(integrate.quad(integrand, -12, 12, limit=200, epsabs=0)[0])


def test_student_answer_is_the_integral_over_shift_and_scale():
    """Its predictive density and its evidence ratio between two kernels equal the
    integrals over y's shift and scale, done by quadrature."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=7)
    y = rng.normal(size=7) * 3 + 5
    k = 6
    logs = []
    for ls in (0.5, 2.0):
        C, sd = _rbf(x, ls), np.full(7, 0.3)
        log_ev, loc, scale, dof = fc.student_answer(C[None], sd[None], y[:k])
        Sigma0 = C + np.diag(sd ** 2)
        joint, context = _by_quadrature(Sigma0, y), _by_quadrature(Sigma0[:k, :k], y[:k])
        density = stats.t.pdf(y[k], dof, loc[0, 0], scale[0, 0])
        assert np.exp(joint - context) == pytest.approx(density, rel=2e-3)
        logs.append((log_ev[0], context))
    (ev1, q1), (ev2, q2) = logs
    assert ev1 - ev2 == pytest.approx(q1 - q2, abs=2e-3)


def test_crps_of_a_mixture_by_sampling_matches_the_closed_forms():
    """A Gaussian mixture (Student t's of huge degrees of freedom) and one Student t: the
    sampled CRPS is their closed form's."""
    rng = np.random.default_rng(1)
    loc, scale, w = np.array([[0.0], [2.0]]), np.array([[1.0], [0.5]]), np.array([0.3, 0.7])
    y = np.array([-1.0, 1.2, 4.0])
    got = [fc.crps_student_mixture(np.array([v]), loc, scale, w, 1e9, rng, 100_000)[0] for v in y]
    exact = scoringrules.crps_mixnorm(y, loc.T, scale.T, w[None])
    assert np.allclose(got, exact, rtol=0.01)
    got = fc.crps_student_mixture(y, np.full((1, 3), 0.5), np.full((1, 3), 2.0), np.ones(1), 4,
                                  rng, 100_000)
    assert np.allclose(got, scoringrules.crps_t(y, 4, 0.5, 2.0), rtol=0.01)


def test_covariances_of_standardized_draws():
    """Both are centred with trace N - 1 (each standardized draw has squared norm N - 1);
    for exchangeable points (K = I) both are P, the centring projection, exactly; for a
    smooth kernel the first-order one errs by up to a fifth at the extremes."""
    rng = np.random.default_rng(2)
    x = np.sort(rng.normal(size=20))
    K = _rbf(x, 0.7) + 1e-6 * np.eye(20)
    first, sampled = fc.moment_covariance(K), fc.sampled_covariance(K, rng)
    for C in (first, sampled):
        assert np.abs(C.sum(0)).max() < 1e-9 and np.trace(C) == pytest.approx(19)
    assert np.abs(first - sampled).max() > 0.3                     # 2.8 against 2.3
    P = np.eye(20) - 1 / 20
    assert np.allclose(fc.moment_covariance(np.eye(20)), P)
    assert np.abs(fc.sampled_covariance(np.eye(20), rng) - P).max() < 0.03


def test_hyperprior_answer_is_a_seeded_weighting_of_its_draws():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(15, 2))
    y = np.sin(x[:, 0]) + 0.1 * rng.normal(size=15)
    w, loc, scale, dof, n_eff = fc.hyperprior_answer("heteroscedastic", x, y[:10], 300, seed=4, chunk=128)
    assert w.shape == (300,) and loc.shape == scale.shape == (300, 5) and dof == 9
    assert w.sum() == pytest.approx(1) and 1 <= n_eff < 300
    again = fc.hyperprior_answer("heteroscedastic", x, y[:10], 300, seed=4, chunk=128)[0]
    assert np.array_equal(w, again)


def test_bimodal_answer_without_a_gap_is_the_gaussian_process():
    """With the branches' gap -> 0 the mean-field answer is exact: its evidence bound is
    the GP's log marginal likelihood and its query moments the GP posterior's."""
    rng = np.random.default_rng(5)
    x = np.sort(rng.normal(size=9))
    C = _rbf(x, 0.8)[None]
    y = np.sin(2 * x[:6]) + 0.2 * rng.normal(size=6)
    sigma, gap = np.array([0.3]), np.array([1e-9])
    elbo, loc, var, offset, noise = fc.bimodal_answer(C, sigma, gap, y)
    a2 = 1 / (1 + 0.09)
    K = a2 * C[0] + fc.SHIFT_VARIANCE
    A = K[:6, :6] + a2 * 0.09 * np.eye(6)
    assert elbo[0] == pytest.approx(stats.multivariate_normal(np.zeros(6), A).logpdf(y), abs=1e-6)
    assert np.allclose(loc[0], K[6:, :6] @ np.linalg.solve(A, y))
    assert np.allclose(var[0], np.diag(K[6:, 6:] - K[6:, :6] @ np.linalg.solve(A, K[:6, 6:])))
    assert offset[0] < 1e-8 and noise[0] == pytest.approx(np.sqrt(a2) * 0.3)


def test_prior_average_of_bimodal_tasks_has_two_branches():
    """A smooth curve whose points lie 1.5 above or below it (noise 0.05): at a new point
    the prior's average puts its mass on the two branches, next to none on the curve."""
    rng = np.random.default_rng(6)
    x = np.linspace(-2, 2, 41)[:, None]
    f = np.sin(1.5 * x[:, 0])
    y = f + 1.5 * rng.choice([-1.0, 1.0], size=41) + 0.05 * rng.normal(size=41)
    w, loc, scale, dof, _ = fc.hyperprior_answer("bimodal", x, y[:40], 500, seed=0)
    assert dof is None and w.sum() == pytest.approx(1) and loc.shape == (1000, 1)
    density = lambda v: (w * stats.norm.pdf(v, loc[:, 0], scale[:, 0])).sum()  # noqa: E731
    low, mid, high = (density(f[40] + c) for c in (-1.5, 0.0, 1.5))
    assert min(low, high) > 1.0 and mid < 1e-3
