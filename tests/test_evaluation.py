"""The benchmark's reference answers: exact Bayes posterior and least squares."""

import numpy as np

from skdiffusion.evaluation import bayes_predictive, least_squares, linear_tasks


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
