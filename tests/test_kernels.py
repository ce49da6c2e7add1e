"""In-context GP model averaging (skdiffusion.kernels) against scikit-learn's GP, exactly."""

import math

import numpy as np
import pytest
import torch
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, DotProduct, WhiteKernel

from skdiffusion import kernels
from skdiffusion.kernels import (N_KERNELS, fit_gp, fit_lengthscales, gp_features, gp_features_at,
                                 gp_moments)


def _task(k=25, m=7, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((k + m, d))
    y = np.sin(2 * x[:, 0]) + 0.5 * x[:, 1] + 0.1 * rng.standard_normal(k + m)
    return x[:k], (y[:k] - y[:k].mean()) / y[:k].std(), x[k:]


def _t(a):
    return torch.as_tensor(a, dtype=torch.float64)[None]


def _fixed_ard(ls, g):
    """A stand-in for fit_lengthscales: lengthscales ls for every task, linear part g
    where the form has one."""
    def fit(x, y, w, d, theta0, log_r0, linear):
        return torch.as_tensor(ls, dtype=x.dtype).expand(len(x), -1), g * linear
    return fit


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # sklearn: log(sigma_0 = 0)
def test_each_kernel_is_sklearns_gp_at_the_profiled_signal_variance(monkeypatch):
    """One lengthscale c and one ratio r: the RBF and linear members are exactly the GPs
    s2 * (RBF(c sqrt(d)) + c0 + r) and s2 * (x.x'/d + c0 + r) (c0: the unknown mean's
    prior variance) with s2 the profile maximizer, and their posterior odds are the prior
    odds times the ratio of scikit-learn's marginal likelihoods."""
    c, r = 0.7, 0.05
    monkeypatch.setattr(kernels, "LENGTHSCALES", (c,))
    monkeypatch.setattr(kernels, "RATIOS", (r,))
    monkeypatch.setattr(kernels, "PSEUDO", 0.0)
    c0 = kernels.INTERCEPT
    xc, yc, xq = _task()
    k, d = xc.shape
    feats = gp_features_at(fit_gp(_t(xc), _t(yc), torch.ones((1, k), dtype=torch.bool)),
                           _t(xq))[0].numpy()
    units = [RBF(c * math.sqrt(d)), DotProduct(sigma_0=0.0) * ConstantKernel(1 / d)]
    lml = []
    for j, unit in enumerate(units):
        unit = unit + ConstantKernel(c0)                    # the unknown mean
        R = unit(xc)
        s2 = yc @ np.linalg.solve(R + r * np.eye(k), yc) / k
        kernel = ConstantKernel(s2) * unit + WhiteKernel(s2 * r)
        gp = GaussianProcessRegressor(kernel, optimizer=None, alpha=0.0).fit(xc, yc)
        mean, std = gp.predict(xq, return_std=True)
        np.testing.assert_allclose(feats[:, j], mean, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(np.exp(feats[:, 2 + j]), std**2, rtol=1e-6)
        lml.append(gp.log_marginal_likelihood_value_)
    prior = 1 - kernels.LINEAR_PRIOR, kernels.LINEAR_PRIOR
    odds = prior[1] / prior[0] * np.exp(lml[1] - lml[0])
    np.testing.assert_allclose(feats[:, 4], 1 / (1 + odds), rtol=1e-7)


def _sklearn_gp(unit, xc, yc, r):
    """scikit-learn's GP s2 * (unit + c0 + r I) at the profiled s2, and its log ML."""
    unit = unit + ConstantKernel(kernels.INTERCEPT)
    s2 = yc @ np.linalg.solve(unit(xc) + r * np.eye(len(yc)), yc) / len(yc)
    kernel = ConstantKernel(s2) * unit + WhiteKernel(s2 * r)
    return GaussianProcessRegressor(kernel, optimizer=None, alpha=0.0).fit(xc, yc)


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
def test_ard_member_is_sklearns_gp_at_its_lengthscales_and_weighed_by_penalized_evidence(
        monkeypatch):
    """Given its lengthscales, the ARD member is exactly the GP s2 * (RBF(ls) + c0 + r)
    and its posterior odds against an isotropic RBF are the prior odds times the ratio
    of marginal likelihoods times k^(-ARD_PENALTY (d - 1))."""
    c, r = 0.7, 0.05
    monkeypatch.setattr(kernels, "HETERO", False)
    monkeypatch.setattr(kernels, "LENGTHSCALES", (c,))
    monkeypatch.setattr(kernels, "RATIOS", (r,))
    monkeypatch.setattr(kernels, "PSEUDO", 0.0)
    ls = np.array([0.8, 2.5, 6.0])
    monkeypatch.setattr(kernels, "fit_lengthscales", _fixed_ard(ls, 0.0))
    xc, yc, xq = _task(k=30)
    k, d = xc.shape
    fit = fit_gp(_t(xc), _t(yc), torch.ones((1, k), dtype=torch.bool), ard=True)
    feats = gp_features_at(fit, _t(xq))[0].numpy()
    L = 3                                                   # RBF(c), linear, ARD
    gp = _sklearn_gp(RBF(ls), xc, yc, r)
    mean, std = gp.predict(xq, return_std=True)
    np.testing.assert_allclose(feats[:, L - 1], mean, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(np.exp(feats[:, 2 * L - 1]), std**2, rtol=1e-6)
    iso = _sklearn_gp(RBF(c * math.sqrt(d)), xc, yc, r)
    odds = np.exp(gp.log_marginal_likelihood_value_ - iso.log_marginal_likelihood_value_
                  - kernels.ARD_PENALTY * (d - 1) * np.log(k))    # equal prior weights
    np.testing.assert_allclose(feats[:, 3 * L - 1] / feats[:, 2 * L], odds, rtol=1e-6)


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
@pytest.mark.parametrize("slope", [0.0, 2.0])
def test_ard_member_keeps_the_form_of_higher_penalized_evidence(monkeypatch, slope):
    """The ARD member's second form, with linear part g, is exactly the GP
    s2 * (RBF(ls) + g x.x'/d + c0 + r); each task keeps the form whose marginal
    likelihood, penalized ARD_PENALTY log k for g, is higher: the RBF alone on a sine,
    the sum once a trend is added to it."""
    c, r, g = 0.7, 0.05, 0.5
    for name, value in (("HETERO", False), ("LENGTHSCALES", (c,)), ("RATIOS", (r,)),
                        ("PSEUDO", 0.0)):
        monkeypatch.setattr(kernels, name, value)
    ls = np.array([0.8, 2.5, 6.0])
    monkeypatch.setattr(kernels, "fit_lengthscales", _fixed_ard(ls, g))
    rng = np.random.default_rng(4)
    x = rng.standard_normal((37, 3))
    y = np.sin(2 * x[:, 0]) + slope * x[:, 2] + 0.1 * rng.standard_normal(37)
    xc, xq, yc = x[:30], x[30:], (y[:30] - y[:30].mean()) / y[:30].std()
    k, d = xc.shape
    fit = fit_gp(_t(xc), _t(yc), torch.ones((1, k), dtype=torch.bool), ard=True)
    feats = gp_features_at(fit, _t(xq))[0].numpy()
    forms = {lin: _sklearn_gp(RBF(ls) + ConstantKernel(g * lin / d) * DotProduct(sigma_0=0.0),
                              xc, yc, r) for lin in (0, 1)}
    evidence = {lin: gp.log_marginal_likelihood_value_ - kernels.ARD_PENALTY * lin * np.log(k)
                for lin, gp in forms.items()}
    kept = max(evidence, key=evidence.get)
    assert kept == (slope > 0) and fit["g"].item() == g * kept
    mean, std = forms[kept].predict(xq, return_std=True)
    L = 3                                                   # RBF(c), linear, ARD
    np.testing.assert_allclose(feats[:, L - 1], mean, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(np.exp(feats[:, 2 * L - 1]), std**2, rtol=1e-6)


def test_ard_member_keeps_a_linear_part_on_a_skewed_trend(monkeypatch):
    """statsmodels' cancer counts against population (skewed: a few far larger counties),
    5-fold: the ARD member keeps its linear part in every fold, and the model average's
    out-of-fold R^2 is higher than with the RBF alone (0.924 against 0.857), which bends
    back towards the mean beyond the bulk of the data."""
    import statsmodels.datasets
    from sklearn.model_selection import KFold

    df = statsmodels.datasets.cancer.load_pandas().data
    x, y = df["population"].to_numpy(float), df["cancer"].to_numpy(float)
    r2 = {}
    for lin in (True, False):
        if not lin:  # rule the linear form out: at d = 1 only g is penalized
            monkeypatch.setattr(kernels, "ARD_PENALTY", 1e6)
        err = np.zeros(len(y))
        for tr, te in KFold(5, shuffle=True, random_state=0).split(x):
            xs = (x - x[tr].mean()) / x[tr].std()
            ys = np.where(np.isin(np.arange(len(y)), tr), (y - y[tr].mean()) / y[tr].std(), 0)
            order = np.concatenate([tr, te])
            is_ctx = torch.arange(len(y))[None] < len(tr)
            fit = fit_gp(_t(xs[order, None]), _t(ys[order]), is_ctx, ard=True)
            assert (fit["g"].item() > 0) == lin
            mean = gp_features_at(fit, _t(xs[te, None]))[0, :, -2].numpy()
            err[te] = mean * y[tr].std() + y[tr].mean() - y[te]
        r2[lin] = 1 - np.mean(err**2) / np.var(y)
    assert r2[True] > r2[False] + 0.04


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
def test_heteroscedastic_variant_is_sklearns_gp_with_its_noise_per_point(monkeypatch):
    """Given its log-variance model h, the ARD member's heteroscedastic variant is exactly
    the GP s2 * (RBF(ls) + c0) with noise s2 r exp(h(x_i)) at context point i (sklearn's
    per-point alpha), s2 profiled, and its predictive variance adds s2 r exp(h(x))."""
    c, r = 0.7, 0.05
    for name, value in (("LENGTHSCALES", (c,)), ("RATIOS", (r,)), ("PSEUDO", 0.0),
                        ("HET_SHARE", 1.0)):  # the slot holds the variant alone
        monkeypatch.setattr(kernels, name, value)
    ls = np.array([0.8, 2.5, 6.0])
    monkeypatch.setattr(kernels, "fit_lengthscales", _fixed_ard(ls, 0.0))
    xc, yc, xq = _task(k=30)
    yc = yc * np.exp(0.5 * xc[:, 1])  # noise growing along feature 1
    k = len(yc)
    fit = fit_gp(_t(xc), _t(yc), torch.ones((1, k), dtype=torch.bool), ard=True)
    feats = gp_features_at(fit, _t(xq))[0].numpy()
    xm, slope = fit["het"]["xm"][0].numpy(), fit["het"]["c"][0].numpy()
    h = lambda x: np.clip((x - xm) @ slope, -kernels.HET_CLIP, kernels.HET_CLIP)  # noqa: E731
    assert abs(slope[1]) > 0.1  # a non-trivial h
    unit = RBF(ls) + ConstantKernel(kernels.INTERCEPT)
    noise = r * np.exp(h(xc))
    s2 = yc @ np.linalg.solve(unit(xc) + np.diag(noise), yc) / k
    gp = GaussianProcessRegressor(ConstantKernel(s2) * unit, optimizer=None,
                                  alpha=s2 * noise).fit(xc, yc)
    mean, std = gp.predict(xq, return_std=True)
    L = 3                                                   # RBF(c), linear, ARD slot
    np.testing.assert_allclose(feats[:, L - 1], mean, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(np.exp(feats[:, 2 * L - 1]), std**2 + s2 * r * np.exp(h(xq)),
                               rtol=1e-6)


def test_heteroscedastic_variant_finds_the_noise_slope_and_only_where_there_is_one():
    """Noise sd 0.3 exp(x_0) on a smooth f of x_1 (200 points): the variant's log-variance
    slope is 2 along x_0, less the bias of a log of squared residuals that also carry
    f's error (1.41 here), and near 0 along x_1, and it takes all the ARD slot's weight;
    with the same noise at constant sd its slope is near 0 (it is then the ARD member
    again, whatever its weight) and its weight no more than its prior share."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 200, 2))
    f = np.sin(x[..., 1])
    weights = {}
    for name, sd in (("hetero", 0.3 * np.exp(x[..., 0])), ("homo", 0.3 * np.exp(0.5))):
        y = f + sd * rng.standard_normal((1, 200))
        fit = fit_gp(_t(x[0]), _t((y[0] - y.mean()) / y.std()),
                     torch.ones((1, 200), dtype=torch.bool), ard=True)
        post = fit["post"][0].sum(-1)
        weights[name] = float(post[-1] / post[-2:].sum())
        slope = fit["het"]["c"][0].numpy()
        if name == "hetero":
            assert 1.0 < slope[0] < 2.5 and abs(slope[1]) < 0.5
        else:
            assert np.abs(slope).max() < 0.3
    assert weights["hetero"] > 0.99 and weights["homo"] <= kernels.HET_SHARE


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
def test_ard_lengthscales_maximize_the_marginal_likelihood_under_a_flat_prior(monkeypatch):
    """With a flat prior, many steps and no pseudo-observation, fit_lengthscales reaches
    scikit-learn's type-II maximum-likelihood lengthscales and log marginal likelihood
    for the kernel s2 * (RBF(ls) + c0) + noise."""
    monkeypatch.setattr(kernels, "ARD_PRIOR_SD", 1e4)
    monkeypatch.setattr(kernels, "PSEUDO", 0.0)
    monkeypatch.setattr(kernels, "ARD_STEPS", 400)
    monkeypatch.setattr(kernels, "ARD_LR", 0.05)
    xc, yc, _ = _task(k=40, d=2, seed=6)
    k, d = xc.shape
    x, y, w = _t(xc), _t(yc), torch.ones((1, k), dtype=torch.float64)
    ls, g = fit_lengthscales(x, y, w, torch.full((1, 1, 1), float(d), dtype=torch.float64),
                             torch.zeros((1, 1), dtype=torch.float64),
                             torch.full((1, 1), math.log(0.1), dtype=torch.float64))
    assert g.item() == 0  # no linear part asked for
    ls = ls[0].numpy()
    kernel = (ConstantKernel(1.0, (1e-3, 1e3)) * (RBF(np.ones(d), (1e-2, 1e2))
              + ConstantKernel(kernels.INTERCEPT, "fixed")) + WhiteKernel(0.1, (1e-5, 10)))
    gp = GaussianProcessRegressor(kernel, alpha=0.0, n_restarts_optimizer=3,
                                  random_state=0).fit(xc, yc)
    np.testing.assert_allclose(ls, gp.kernel_.k1.k2.k1.length_scale, rtol=0.02)


def test_ard_objective_gradient_is_autograds():
    """The closed-form gradient of the ARD member's objective equals autograd's through
    the Cholesky, per task, with masked tokens, unused features and a heavy noise ratio."""
    g = torch.Generator().manual_seed(3)
    B, N, F = 5, 30, 4
    x = torch.randn((B, N, F), generator=g, dtype=torch.float64)
    x[:2, :, 3] = 0                                                   # unused in two tasks
    w = (torch.arange(N)[None] < torch.tensor([[30], [12], [3], [20], [7]])).double()
    y = (torch.sin(2 * x[..., 0]) + 0.3 * torch.randn((B, N), generator=g, dtype=torch.float64)) * w
    used = ((x * w[..., None]) != 0).any(1).double()
    sqrt_d = used.sum(-1, keepdim=True).sqrt()
    theta = (0.5 * torch.randn((B, F), generator=g, dtype=torch.float64) * used).requires_grad_()
    log_r = torch.tensor([[-6.0], [-2.0], [0.0], [1.5], [-4.0]], dtype=torch.float64,
                         requires_grad=True)
    log_g = torch.tensor([[0.3], [-1.0], [-3.0], [1.0], [0.0]], dtype=torch.float64,
                         requires_grad=True)
    linear = torch.tensor([[1.0], [1.0], [0.0], [1.0], [0.0]], dtype=torch.float64)
    nll, d_theta, d_log_r, d_log_g = kernels._ard_objective(x, y, w, sqrt_d, used, theta,
                                                            log_r, log_g, linear)
    ref_theta, ref_log_r, ref_log_g = torch.autograd.grad(nll.sum(), [theta, log_r, log_g])
    torch.testing.assert_close(d_theta, ref_theta, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(d_log_r, ref_log_r, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(d_log_g, ref_log_g, rtol=1e-9, atol=1e-10)
    assert d_theta.abs().min(0).values[:3].gt(0).all() and d_log_r.abs().gt(0).all()
    assert d_log_g[linear > 0].abs().gt(0).all() and d_log_g[linear == 0].eq(0).all()


def test_ard_lengthscales_of_a_large_context_are_those_of_an_evenly_spaced_subset(monkeypatch):
    """Beyond ARD_POINTS rows the lengthscales are fitted on rows spread over the whole
    context (sorted data keep their range), exactly as if only those were given."""
    monkeypatch.setattr(kernels, "ARD_POINTS", 10)
    x = torch.linspace(-2, 2, 37, dtype=torch.float64)[None, :, None].repeat(1, 1, 2)
    x[..., 1] = torch.randn(37, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.sin(2 * x[..., 0])
    w = torch.ones((1, 37), dtype=torch.float64)
    start = (torch.full((1, 1, 1), 2.0, dtype=torch.float64), torch.zeros((1, 1), dtype=torch.float64),
             torch.full((1, 1), math.log(0.1), dtype=torch.float64),
             torch.ones((1, 1), dtype=torch.float64))                  # with a linear part
    idx = [0, 4, 8, 12, 16, 20, 24, 28, 32, 36]
    got = torch.cat(fit_lengthscales(x, y, w, *start), -1)
    ref = torch.cat(fit_lengthscales(x[:, idx], y[:, idx], w[:, idx], *start), -1)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    other = torch.cat(fit_lengthscales(x[:, :10], y[:, :10], w[:, :10], *start), -1)
    assert not torch.equal(got, other)


def test_ard_member_finds_the_relevant_feature():
    """y depends on the first of three features: the irrelevant ones get lengthscales many
    times longer, the ARD member takes most of the weight and predicts better than the
    isotropic average."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 80, 3))
    y = np.sin(2 * x[..., 0]) + 0.05 * rng.standard_normal((1, 80))
    y = (y - y[:, :60].mean()) / y[:, :60].std()
    is_ctx = torch.arange(80)[None] < 60
    fit = fit_gp(torch.as_tensor(x), torch.as_tensor(y), is_ctx, ard=True)
    ls = fit["ls"][0]
    assert ls[1] > 5 * ls[0] and ls[2] > 5 * ls[0]
    assert fit["post"][0, -2:].sum() > 0.9  # the ARD member and its heteroscedastic variant
    err = {ard: (gp_features(torch.as_tensor(x), torch.as_tensor(y), is_ctx, ard=ard)[0, 60:, -2]
                 - torch.as_tensor(y[0, 60:])).pow(2).mean() for ard in (False, True)}
    assert err[True] < 0.5 * err[False]


def test_model_average_is_the_mixture_of_its_members():
    xc, yc, xq = _task(k=40, seed=1)
    feats = gp_features_at(fit_gp(_t(xc), _t(yc), torch.ones((1, 40), dtype=torch.bool)),
                           _t(xq))[0]
    L = N_KERNELS
    mu, var, p = feats[:, :L], feats[:, L:2 * L].exp(), feats[:, 2 * L:3 * L]
    torch.testing.assert_close(p.sum(-1), torch.ones(len(xq), dtype=torch.float64))
    m = (p * mu).sum(-1)
    v = (p * (var + mu**2)).sum(-1) - m**2
    torch.testing.assert_close(feats[:, -2], m)
    torch.testing.assert_close(feats[:, -1].exp(), v)
    mean, variance = gp_moments(feats, 1e-4, 10.0)
    torch.testing.assert_close(variance, v.clamp(1e-4, 10.0))


@pytest.mark.parametrize("ard", [False, True])
def test_masked_tokens_and_padding_change_nothing(ard):
    """Features of a task fitted among non-context tokens (anywhere in the sequence) and
    zero-padded feature columns equal those of the bare context; an empty context gives
    the prior (mean 0)."""
    xc, yc, xq = _task(k=20, m=5, d=2, seed=2)
    bare = gp_features(_t(np.vstack([xc, xq])), _t(np.r_[yc, np.zeros(5)]),
                       torch.tensor([[True] * 20 + [False] * 5]), ard=ard)
    order = np.random.default_rng(0).permutation(25)
    x = np.pad(np.vstack([xc, xq])[order], ((0, 0), (0, 3)))
    y = np.r_[yc, 99 * np.ones(5)][order]                  # y of non-context never read
    is_ctx = torch.tensor(order < 20)[None]
    mixed = gp_features(_t(x), _t(y), is_ctx, ard=ard)
    tol = 1e-8 if ard else 1e-9  # the ARD fit's Adam steps see sums in another order
    torch.testing.assert_close(mixed[0, np.argsort(order)], bare[0], rtol=tol, atol=tol)
    empty = gp_features(_t(x), _t(y), torch.zeros((1, 25), dtype=torch.bool), ard=ard)
    assert torch.all(empty[..., -2] == 0) and torch.isfinite(empty).all()


@pytest.mark.parametrize("ard", [False, True])
def test_a_batch_is_its_tasks_and_rbf_wins_on_a_curve_linear_on_a_line(ard):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 60, 1))
    y = np.stack([np.sin(3 * x[0, :, 0]), 2 * x[1, :, 0]]) + 0.05 * rng.standard_normal((2, 60))
    is_ctx = torch.arange(60)[None] < torch.tensor([[50], [30]])
    both = gp_features(torch.as_tensor(x), torch.as_tensor(y), is_ctx, ard=ard)
    for b in range(2):
        alone = gp_features(torch.as_tensor(x[b:b + 1]), torch.as_tensor(y[b:b + 1]),
                            is_ctx[b:b + 1], ard=ard)
        tol = 1e-8 if ard else 1e-9  # batched Cholesky rounding, amplified by Adam
        torch.testing.assert_close(both[b], alone[0], rtol=tol, atol=tol)
    L = N_KERNELS + ard
    weights = both[:, 0, 2 * L:3 * L]
    weights = torch.cat([weights[:, :N_KERNELS - 1], weights[:, N_KERNELS:],
                         weights[:, N_KERNELS - 1:N_KERNELS]], 1)  # the linear member last
    assert weights[0, :-1].sum() > 0.99                    # a curve: the RBF members
    assert weights[1, -1] > 0.9                            # a line: the linear member
    err = (both[:, 50:, -2] - torch.as_tensor(y[:, 50:])).abs().max()
    assert err < 0.3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("baseline", ["gp", "ard"])
def test_head_denoiser_with_gp_baseline_starts_at_the_model_average(dtype, baseline):
    from skdiffusion.config import ModelConfig
    from skdiffusion.pretrained import build

    spec = ModelConfig(architecture="head", baseline=baseline, max_features=4, n_layer=1,
                       n_embd=16, n_head=2, timesteps=20).spec()
    model, schedule = build(spec)
    model = model.to(dtype)
    xc, yc, xq = _task(k=30, m=6, d=3, seed=4)
    x = torch.as_tensor(np.pad(np.vstack([xc, xq]), ((0, 0), (0, 1))), dtype=dtype)[None]
    y = torch.as_tensor(np.r_[yc, np.zeros(6)], dtype=dtype)[None]
    is_ctx = torch.arange(36)[None] < 30
    h, feats = model.encode(x, y, is_ctx)
    m, s2, _ = model.moments(feats[~is_ctx][:, None])
    ref = gp_moments(gp_features(x.double(), y.double(), is_ctx, ard=baseline == "ard"),
                     1e-4, 10.0)
    tol = 1e-3 if dtype == torch.float32 else 1e-9  # float32 eigh at ratio 1e-4
    torch.testing.assert_close(m[:, 0].double(), ref[0][~is_ctx], rtol=tol, atol=tol)
    torch.testing.assert_close(s2[:, 0].double(), ref[1][~is_ctx], rtol=tol, atol=tol)
    with pytest.raises(ValueError, match="needs architecture='head'"):
        ModelConfig(architecture="set", baseline="gp").spec()


def test_a_context_split_into_parts_gets_the_whole_contexts_baseline(tmp_path):
    """A context larger than meta-training's is split into parts for the transformer, but
    the GP baseline is fitted to all of it: an untrained (zero-head) model samples the
    whole context's model average, as the same model does when the context fits whole
    (the same sampler, so the same discretization error), not a pool of the parts' ones."""
    from skdiffusion import DiffusionICLRegressor
    from skdiffusion.bench.predictive import features_alone
    from skdiffusion.checkpoint import save_model
    from skdiffusion.config import ModelConfig
    from skdiffusion.pretrained import build

    xc, yc, xq = _task(k=50, m=5, d=2, seed=5)
    samples = {}
    for max_context in (16, 64):
        spec = ModelConfig(architecture="head", baseline="gp", max_features=4, n_layer=1,
                           max_context=max_context, n_embd=16, n_head=2, timesteps=20).spec()
        save_model(str(tmp_path / str(max_context)), build(spec)[0], spec)
        params = {"model": str(tmp_path / str(max_context)), "n_samples": 4000,
                  "random_state": 0}
        reg = DiffusionICLRegressor(**params).fit(xc, yc)
        n_parts = len(reg._context_subsets(50, np.random.default_rng(0)))
        assert n_parts == (4 if max_context == 16 else 1)
        samples[max_context] = reg.sample(xq)
    m, s, _ = features_alone(params)(xc, yc, xq)
    np.testing.assert_allclose(samples[16].mean(1), m, atol=0.05 * s.max())
    np.testing.assert_allclose(samples[16].std(1), samples[64].std(1), rtol=0.05)


def test_relevant_features_rank_by_ard_lengthscale():
    """y depends on features 1 and 4 of six, feature 5 is unused (all zero): those two
    come first, in column order, and the unused one is never chosen while used ones remain."""
    from skdiffusion.kernels import relevant_features

    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 80, 6))
    x[..., 5] = 0
    y = np.sin(2 * x[..., 1]) + x[..., 4] + 0.05 * rng.standard_normal((1, 80))
    fit = fit_gp(torch.as_tensor(x), torch.as_tensor((y - y.mean()) / y.std()),
                 torch.ones((1, 80), dtype=torch.bool), ard=True)
    assert relevant_features(fit, 2).tolist() == [[1, 4]]
    assert relevant_features(fit, 5).tolist() == [[0, 1, 2, 3, 4]]


def _saved_head_model(path, seed=None):
    """An untrained ``"ard"`` head model directory (max_features=4); with ``seed`` every
    weight is redrawn (a head that is not zero, so the transformer's output matters)."""
    from skdiffusion.checkpoint import save_model
    from skdiffusion.config import ModelConfig
    from skdiffusion.pretrained import build

    spec = ModelConfig(architecture="head", baseline="ard", max_features=4, n_layer=1,
                       n_embd=16, n_head=2, timesteps=20).spec()
    model = build(spec)[0]
    if seed is not None:
        g = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            p.data = 0.2 * torch.randn(p.shape, generator=g)
    save_model(str(path), model, spec)
    return str(path)


def test_wide_inputs_fit_the_baseline_to_every_feature(tmp_path, monkeypatch):
    """Seven features, the model's transformer reads four: an untrained (zero-head) model
    samples the Gaussian of its baseline fitted to all seven (y depends on features 0
    and 6): the sample mean is the baseline's and the sample std that of the sampler's
    chain law for it (18-26 % wider here); and it beats the same model given only the
    first four."""
    monkeypatch.setattr(kernels, "HETERO", False)
    from skdiffusion import DiffusionICLRegressor
    from skdiffusion.bench.predictive import features_alone
    from skdiffusion.diffusion import NoiseSchedule

    from .test_diffusion import chain_law

    rng = np.random.default_rng(8)
    x = rng.standard_normal((70, 7))
    y = np.sin(2 * x[:, 0]) + x[:, 6] + 0.1 * rng.standard_normal(70)
    params = {"model": _saved_head_model(tmp_path / "m"), "n_samples": 4000, "random_state": 0}
    reg = DiffusionICLRegressor(**params).fit(x[:50], y[:50])
    samples = reg.sample(x[50:])
    m, s, _ = features_alone(params)(x[:50], y[:50], x[50:])
    np.testing.assert_allclose(samples.mean(1), m, atol=0.05 * s.max())
    spec, scale = reg.model_spec_, y[:50].std()
    schedule = NoiseSchedule(spec["timesteps"], spec["schedule"])
    law = [chain_law(schedule, 0.0, si / scale, "ddpm", reg.sampler_settings(schedule.timesteps)
                     ["n_steps"], variance="beta", data_var=True)[1] * scale for si in s]
    np.testing.assert_allclose(samples.std(1), law, rtol=0.05)
    narrow = DiffusionICLRegressor(**params).fit(x[:50, :4], y[:50]).predict(x[50:, :4])
    err = lambda pred: np.mean((pred - y[50:]) ** 2)  # noqa: E731
    assert err(samples.mean(1)) < 0.5 * err(narrow)


def test_wide_inputs_whose_extra_columns_are_unused_give_the_narrow_answer(tmp_path):
    """Columns that are zero everywhere change neither the kernels nor the transformer's
    view (the four used columns, in order): a model with random weights samples, from the
    same noise, the same as on the four columns alone (a context of k < d + 2 points: the
    narrow call's far-query fallback, which wide inputs skip, cannot fire)."""
    from skdiffusion.diffusion import NoiseSchedule, draw_noise, n_noise_draws
    from skdiffusion.inference import sample_context_parts
    from skdiffusion.pretrained import load_directory

    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 10, 4))
    y = np.sin(x[..., 0]) + x[..., 2] + 0.1 * rng.standard_normal((1, 10))
    wide = np.zeros((1, 10, 6))
    wide[..., [0, 2, 3, 5]] = x
    model = load_directory(_saved_head_model(tmp_path / "m", seed=1))[0].eval()
    schedule = NoiseSchedule(20, "cosine")
    noise = draw_noise(n_noise_draws(schedule), (1, 1, 5, 8), torch.Generator().manual_seed(0))
    t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    narrow = sample_context_parts(model, schedule, [(t(x[:, :5]), t(y[:, :5]))], t(x[:, 5:]),
                                  noise)
    assert float(narrow.std()) > 0.1  # samples, not a constant
    got = sample_context_parts(model, schedule, [(t(wide[:, :5]), t(y[:, :5]))],
                               t(wide[:, 5:]), noise)
    torch.testing.assert_close(got, narrow, rtol=1e-4, atol=1e-4)


def test_a_context_over_the_whole_context_limit_gets_a_baseline_of_evenly_spaced_rows(
        monkeypatch, tmp_path):
    """Above WHOLE_CONTEXT_MAX points the parts' shared baseline is fitted to that many
    of them, evenly spaced: an untrained model samples that fit's Gaussian."""
    from skdiffusion import inference
    from skdiffusion.diffusion import NoiseSchedule, draw_noise, n_noise_draws
    from skdiffusion.pretrained import load_directory

    monkeypatch.setattr(inference, "WHOLE_CONTEXT_MAX", 20)
    xc, yc, xq = _task(k=50, m=5, d=2, seed=6)
    model = load_directory(_saved_head_model(tmp_path / "m"))[0].double().eval()
    x, y, q = _t(np.pad(xc, ((0, 0), (0, 2)))), _t(yc), _t(np.pad(xq, ((0, 0), (0, 2))))
    parts = [(x[:, a:b], y[:, a:b]) for a, b in ((0, 16), (16, 32), (32, 50))]
    schedule = NoiseSchedule(20, "cosine")
    noise = draw_noise(n_noise_draws(schedule), (3, 1, 5, 2000), torch.Generator().manual_seed(0),
                       torch.float64, antithetic=True)
    s = inference.sample_context_parts(model, schedule, parts, q, noise)
    rows = torch.linspace(0, 49, 20).round().long()
    m, v, _ = inference.baseline_predictive(model, x[:, rows], y[:, rows], q)
    torch.testing.assert_close(s.mean((0, 3))[0], m[0], atol=0.02 * float(v.max().sqrt()), rtol=0)
    m_all, _, _ = inference.baseline_predictive(model, x, y, q)
    assert (m_all - m).abs().max() > 0.1 * float(v.max().sqrt())  # the subset differs


def test_analytic_variance_samples_an_untrained_models_baseline_exactly(tmp_path):
    """With ``variance="analytic"`` the chain of a zero-head model is the exact sampler of
    its Gaussian baseline at any number of steps (tests/test_diffusion.py): three context
    parts, one shared whole-context fit, 3 steps, every query's mean and standard
    deviation within Monte Carlo error of the baseline's (the heteroscedastic variant
    on); the default "beta" chain, 19-23 % too wide here, fails the same check."""
    from skdiffusion import inference
    from skdiffusion.diffusion import NoiseSchedule, draw_noise, n_noise_draws
    from skdiffusion.pretrained import load_directory

    xc, yc, xq = _task(k=48, m=6, d=2, seed=7)
    model = load_directory(_saved_head_model(tmp_path / "m"))[0].double().eval()
    x, y, q = _t(np.pad(xc, ((0, 0), (0, 2)))), _t(yc), _t(np.pad(xq, ((0, 0), (0, 2))))
    parts = [(x[:, a:b], y[:, a:b]) for a, b in ((0, 16), (16, 32), (32, 48))]
    schedule, n = NoiseSchedule(20, "cosine"), 4000
    noise = draw_noise(n_noise_draws(schedule, 3), (3, 1, 6, n), torch.Generator().manual_seed(1),
                       torch.float64)
    m, v, _ = inference.baseline_predictive(model, x, y, q)
    sd = v.sqrt()[0]
    for variance, ok in (("analytic", True), ("beta", False)):
        s = inference.sample_context_parts(model, schedule, parts, q, noise, n_steps=3,
                                           variance=variance)
        for part in s[:, 0]:  # every part samples the whole context's baseline
            torch.testing.assert_close(part.mean(-1), m[0], atol=5 * float(sd.max()) / n**0.5,
                                       rtol=0)
            close = ((part.std(-1) / sd - 1).abs() < 5 / (2 * n) ** 0.5).all()
            assert bool(close) == ok


def test_loo_residuals_are_those_of_refitting_without_each_point():
    """(A^-1 y)_i / (A^-1)_ii from the eigenbasis is y_i minus the GP mean at x_i fitted
    to the other points (exactly, by refitting), and zero at masked tokens."""
    xc, yc, _ = _task(k=20, seed=3)
    r = torch.tensor(kernels.RATIOS, dtype=torch.float64)
    w = torch.ones((1, 23), dtype=torch.float64)
    w[0, 20:] = 0
    x, y = _t(np.r_[xc, np.ones((3, 3))]), _t(np.r_[yc, np.ones(3)]) * w
    pad = torch.diag_embed(1 - w)
    K = kernels._kernel_matrices(x, x, torch.full((1, 1, 1), 3.0))[0] * (w[:, :, None] * w[:, None]) - pad
    fit = kernels._fit_kernel(K, y, w.sum(1), r)
    j = 5
    got = kernels._loo_residuals(fit, w, torch.tensor([j]))[0].numpy()
    A = K[0, :20, :20].numpy() + kernels.RATIOS[j] * np.eye(20)
    for i in range(20):
        o = np.arange(20) != i
        np.testing.assert_allclose(got[i], yc[i] - A[i, o] @ np.linalg.solve(A[o][:, o], yc[o]),
                                   rtol=1e-6, atol=1e-9)
    assert (got[20:] == 0).all()


def _curve(n=200, seed=0):
    """A wiggly curve in one feature: y = sin(40 x) + noise, x uniform on [-1, 1]."""
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(-1, 1, n))
    y = np.sin(40 * x) + 0.2 * rng.standard_normal(n)
    return (x - x.mean()) / x.std(), (y - y.mean()) / y.std()


def test_ard_member_starts_short_on_a_wiggly_curve(monkeypatch):
    """sin(40 x) (lengthscale about 0.04 of x's range): from the members' shortest start the
    ascent stays at a smooth fit that reads the curve as noise; from ARD_SHORT the member
    finds the curve and takes nearly all the weight, predicting held-out points far better."""
    x, y = _curve()
    is_ctx = torch.as_tensor(np.arange(200) % 5 != 0)[None]
    args = torch.as_tensor(x)[None, :, None], torch.as_tensor(y * is_ctx[0].numpy())[None]

    def held_out_mse():
        fit = fit_gp(*args, is_ctx, ard=True)
        mean = gp_features_at(fit, args[0])[0, :, -2].numpy()
        return float(fit["ls"][0, 0]), np.mean((mean - y)[~is_ctx[0].numpy()] ** 2), fit

    ls, mse, fit = held_out_mse()
    assert ls < 0.15 and mse < 0.15 and fit["post"][0, -2:].sum() > 0.99
    monkeypatch.setattr(kernels, "ARD_SHORT", (kernels.LENGTHSCALES[0],))  # no shorter start
    ls_long, mse_long, _ = held_out_mse()
    assert ls_long > 0.2 and mse_long > 0.8


def test_ard_member_keeps_a_member_start_where_a_short_one_wins_only_the_evidence():
    """statsmodels' cancer counts against population (skewed: a few far larger counties):
    an isotropic RBF at sqrt(d) / 8 has the higher evidence (it fits the far points
    exactly) but the larger leave-one-out error, so the ascent starts at a member's
    lengthscale."""
    import statsmodels.datasets

    df = statsmodels.datasets.cancer.load_pandas().data
    x, y = df["population"].to_numpy(float), df["cancer"].to_numpy(float)
    x, y = _t(((x - x.mean()) / x.std())[:, None]), _t((y - y.mean()) / y.std())
    w = torch.ones(y.shape, dtype=torch.float64)
    r, k, pad = torch.tensor(kernels.RATIOS, dtype=torch.float64), w.sum(1), torch.zeros(1, 1, 1)
    d = torch.ones((1, 1, 1), dtype=torch.float64)
    members = [kernels._fit_kernel(K, y, k, r) for K in kernels._kernel_matrices(x, x, d)[:4]]
    short = [kernels._fit_kernel(K, y, k, r) for K in kernels._rbf_matrices(x, x, d, kernels.ARD_SHORT)]
    best = lambda fits: max(float(f[4].max()) for f in fits)  # noqa: E731
    assert best(short) > best(members) + 3
    start, _ = kernels._ard_start(members, short, w)
    assert int(start) < len(kernels.LENGTHSCALES)


@pytest.mark.parametrize("ard", [False, True])
def test_the_reflected_features_are_those_of_the_fit_to_minus_y(ard):
    """The features of the fit to -y at new points are those of the fit to y with the
    means negated (bit for bit): the hyperparameters, weights and variances depend on y
    through even functions only."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 40, 3, generator=g, dtype=torch.float64)
    y = torch.sin(x[..., 0]) + 0.3 * torch.randn(2, 40, generator=g, dtype=torch.float64)
    c = torch.ones(2, 40, dtype=torch.bool)
    q = torch.randn(2, 7, 3, generator=g, dtype=torch.float64)
    fit = kernels.fit_gp(x, y, c, ard)
    want = kernels.gp_features_at(kernels.fit_gp(x, -y, c, ard), q)
    got = kernels.gp_features_at(fit, q)
    assert (want - got).abs().max() > 0.1  # the means differ
    torch.testing.assert_close(kernels.reflect_features(got), want, rtol=0, atol=0)


def _gaussian_crps(y, m, v):
    from scipy import stats
    s = np.sqrt(v)
    z = (y - m) / s
    return s * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / np.sqrt(np.pi))


def test_prior_member_is_the_evidence_weighted_average_of_its_draws_gps(monkeypatch):
    """The prior's member, recomputed densely: each draw's GP with f centred over the
    context and scaled to unit mean variance there, the draws weighted by their profile
    likelihood, the member weighted against the other members' evidence (prior
    PRIOR_SHARE); the heteroscedastic draws' noise sd grows as exp(x.u) along their unit
    direction u; the member enters the mixture's mean and variance only."""
    from skdiffusion.priors import GPFunction
    monkeypatch.setattr(kernels, "PRIOR_DRAWS", 6)
    monkeypatch.setattr(kernels, "PRIOR_HET", 0.5)
    monkeypatch.setattr(kernels, "PRIOR_KEEP", 0.0)
    monkeypatch.setattr(kernels, "PRIOR_BIMODAL", 0.0)  # its bimodal and Student-t draws:
    monkeypatch.setattr(kernels, "PRIOR_STUDENT", 0.0)  # the next tests
    k, m = 8, 5
    xc, yc, xq = _task(k=k, m=m, d=2, seed=4)
    c = torch.ones((1, k), dtype=torch.bool)
    fit = fit_gp(_t(xc), _t(yc), c, ard=True)
    got = gp_features_at(fit, _t(xq))[0].numpy()
    monkeypatch.setattr(kernels, "PRIOR_MEMBER", False)
    plain = fit_gp(_t(xc), _t(yc), c, ard=True)
    old = gp_features_at(plain, _t(xq))[0].numpy()
    n = 3 * (N_KERNELS + 1)
    np.testing.assert_array_equal(got[:, :n], old[:, :n])
    np.testing.assert_array_equal(got[:, n], 0)                   # no bimodal part, and
    np.testing.assert_array_equal(got[:, n + 1:n + 3], got[:, -2:])  # the rest is all

    g = torch.Generator().manual_seed(kernels.PRIOR_SEED)
    X = _t(np.vstack([xc, xq])).expand(6, -1, -1)
    h = GPFunction().hyperparameters(X, g)
    lo, hi = np.log(kernels.NOISE_RANGE)
    sd = np.exp(lo + (hi - lo) * torch.rand((6, 1), generator=g, dtype=torch.float64).numpy())
    u = torch.randn((6, 2), generator=g, dtype=torch.float64).numpy()
    het = torch.rand((6, 1), generator=g, dtype=torch.float64).numpy() < 0.5
    assert 0 < het.sum() < 6                                  # both kinds of draw
    u = u / np.linalg.norm(u, axis=1, keepdims=True) * het
    noise = sd**2 * np.exp(2 * np.clip(np.vstack([xc, xq]) @ u.T, -3, 3)).T    # (6, k + m)
    P = np.eye(k + m) - np.r_[np.ones(k), np.zeros(m)][None] / k
    loglik, means, m2s = [], [], []
    for K, s in zip(GPFunction.kernel(h, X, X).numpy(), noise):
        C = P @ K @ P.T
        C *= (k - 1) / np.trace(C[:k, :k])
        C += kernels.INTERCEPT
        A = C[:k, :k] + np.diag(s[:k])
        alpha = np.linalg.solve(A, yc)
        s2 = (yc @ alpha + kernels.PSEUDO) / (k + kernels.PSEUDO)
        loglik.append(-0.5 * (k * np.log(s2) + np.linalg.slogdet(A)[1]))
        mu = C[k:, :k] @ alpha
        var = s2 * (np.diag(C)[k:] + s[k:] - np.einsum("qi,qi->q", C[k:, :k],
                                                       np.linalg.solve(A, C[:k, k:]).T))
        means.append(mu)
        m2s.append(var + mu**2)
    w = np.exp(np.array(loglik) - max(loglik))
    w /= w.sum()
    mean, m2 = w @ np.array(means), w @ np.array(m2s)
    evidence = np.logaddexp.reduce(loglik) - np.log(6)
    lp = kernels._log_prior(N_KERNELS + 1, torch.float64, "cpu", het=True)
    lik = torch.stack([f[4] for f in plain["kernels"]], 1)
    others = float(torch.logsumexp((lik + lp).flatten(), 0)) - np.log(len(kernels.RATIOS))
    p = 1 / (1 + np.exp(others - evidence) * (1 - kernels.PRIOR_SHARE) / kernels.PRIOR_SHARE)
    assert 0.01 < p < 0.99
    np.testing.assert_allclose(float(fit["prior"]["weight"][0]), p, rtol=1e-8)
    mix_m = (1 - p) * old[:, -2] + p * mean
    mix_m2 = (1 - p) * (np.exp(old[:, -1]) + old[:, -2] ** 2) + p * m2
    np.testing.assert_allclose(got[:, -2], mix_m, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(np.exp(got[:, -1]), mix_m2 - mix_m**2, rtol=1e-7)


def _replayed_draws(xc, xq, n_gauss, n):
    """The prior's member's draws replayed: its generator after the n_gauss Gaussian draws
    (they come first) and the next n draws' kernels over context and queries (centred over
    the context and scaled as kernels._centred_kernel's) and noise sd; the draws of a kind's
    own parameters (gap, nu) come next on the generator."""
    from skdiffusion.priors import GPFunction
    (k, F), m = xc.shape, len(xq)
    g = torch.Generator().manual_seed(kernels.PRIOR_SEED)
    GPFunction().hyperparameters(torch.ones((n_gauss, 1, F), dtype=torch.float64), g)
    torch.rand((n_gauss, 1), generator=g, dtype=torch.float64)
    torch.randn((n_gauss, F), generator=g, dtype=torch.float64)
    torch.rand((n_gauss, 1), generator=g, dtype=torch.float64)
    X = _t(np.vstack([xc, xq])).expand(n, -1, -1)
    h = GPFunction().hyperparameters(torch.ones((n, 1, F), dtype=torch.float64), g)
    lo, hi = np.log(kernels.NOISE_RANGE)
    sd = np.exp(lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64).numpy())
    P = np.eye(k + m) - np.r_[np.ones(k), np.zeros(m)][None] / k
    C = np.array([P @ K @ P.T for K in GPFunction.kernel(h, X, X).numpy()])
    C *= (k - 1) / np.trace(C[:, :k, :k], axis1=1, axis2=2)[:, None, None]
    return g, C, sd


def _gaussian_evidence(pf):
    """The full log evidence of the member's Gaussian draws (with the constants of their
    profile likelihood) and its profile evidence, for the first context of ``pf``."""
    L, s2, a = pf["L"][0], pf["s2"][0], pf["a"][0]
    k, n = a.shape[-1], kernels.PRIOR_DRAWS
    logdet = 2 * torch.log(L.diagonal(dim1=-2, dim2=-1)).sum(-1)
    full = (-0.5 * (k * torch.log(2 * np.pi * s2) + logdet + (a * a).sum(-1) / s2)).numpy()
    profile = torch.logsumexp(-0.5 * (k * torch.log(s2) + logdet), -1) - np.log(n)
    return np.logaddexp.reduce(full) - np.log(n), float(profile)


def test_prior_members_bimodal_draws_are_the_ceilings_mean_field_answer(monkeypatch):
    """The prior's member's bimodal draws against benchmarks/family_ceiling.py's mean-field
    answer (NumPy, explicit inverses), draw by draw: evidence lower bounds, then at the
    queries the branches' mean, variance and offset of the draws weighted by their bounds;
    the draws' weight within the member from the two kinds' full log evidence; and the
    features' mixture columns and mixture of Gaussians from them."""
    from .test_family_ceiling import fc

    monkeypatch.setattr(kernels, "PRIOR_DRAWS", 6)
    monkeypatch.setattr(kernels, "PRIOR_BIMODAL_DRAWS", 5)
    monkeypatch.setattr(kernels, "PRIOR_STUDENT", 0.0)  # drawn after these: the next test
    monkeypatch.setattr(kernels, "PRIOR_KEEP", 0.0)
    k, m = 12, 4
    xc, yc, xq = _task(k=k, m=m, d=2, seed=4)
    yc = (yc + np.where(np.arange(k) % 2, 1.5, -1.5)) / np.sqrt(1 + 1.5**2)  # two branches
    pf = kernels._prior_fit(_t(xc), _t(yc))
    bim = kernels._bimodal_moments(pf["bimodal"], _t(xq))[:, 0].numpy()

    g, C, sd = _replayed_draws(xc, xq, 6, 5)
    gap = 0.5 + 1.5 * torch.rand(5, generator=g, dtype=torch.float64).numpy()
    elbo, loc, var, offset, noise = fc.bimodal_answer(C, sd, gap, yc)
    evidence = np.logaddexp.reduce(elbo) - np.log(5)
    np.testing.assert_allclose(float(pf["bimodal"]["evidence"][0]), evidence, rtol=1e-7)
    w = np.exp(elbo - elbo.max())
    w /= w.sum()
    mean, off = w @ loc, w @ offset
    want = [mean, w @ (var + (noise**2 + offset**2)[:, None] + loc**2) - mean**2 - off**2,
            np.full(m, off)]
    np.testing.assert_allclose(bim, np.array(want), rtol=1e-6, atol=1e-7)  # the intercept 1e3

    gauss, profile = _gaussian_evidence(pf)                   # the Gaussian draws
    share = kernels.PRIOR_BIMODAL
    pi = share * np.exp(evidence) / (share * np.exp(evidence) + (1 - share) * np.exp(gauss))
    assert 0.01 < pi                                              # the branches are seen
    np.testing.assert_allclose(float(pf["pi"][0]), pi, rtol=1e-6)

    c = torch.ones((1, k), dtype=torch.bool)
    fit = fit_gp(_t(xc), _t(yc), c, ard=True)
    feats = gp_features_at(fit, _t(xq))
    wb, m_g, lv_g, m_b, lv_b, o = feats[0, :, -8:-2].numpy().T
    member_pi = fit["prior"]["fits"][0][2]["pi"][0]
    np.testing.assert_allclose(wb, float(fit["prior"]["weight"][0] * member_pi))
    got = kernels.gp_mixture(feats, 1e-9, 1e9)[0].numpy()          # (m, 3, 3)
    np.testing.assert_allclose(got[:, 0], np.c_[1 - wb, wb / 2, wb / 2])
    np.testing.assert_allclose(got[:, 1], np.c_[m_g, m_b - o, m_b + o])
    mix_m = (got[:, 0] * got[:, 1]).sum(-1)
    mix_v = (got[:, 0] * (got[:, 2] + got[:, 1] ** 2)).sum(-1) - mix_m**2
    np.testing.assert_allclose(feats[0, :, -2].numpy(), mix_m, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(feats[0, :, -1].exp().numpy(), mix_v, rtol=1e-7)


def _student_answer(C, sd, nu, y, iters):
    """Mean-field posterior of GP draws with Student-t noise, written independently of
    kernels._student_fit (explicit inverses, the posterior covariance of f and the KL
    between Gaussians computed directly, scipy's Gamma entropy and t quantiles): per draw
    the evidence lower bound and, at the queries after the k context points, f's mean and
    the predictive variance with the t noise as the Gaussian of equal interquartile range."""
    from scipy import stats
    from scipy.special import digamma, gammaln

    k = len(y)
    out = []
    for Cs, sds, nus in zip(C, sd, nu):
        a2 = 1 / (1 + sds**2)
        K = a2 * Cs + kernels.INTERCEPT
        Kc = K[:k, :k]
        lam = np.ones(k)
        for _ in range(iters):
            n = a2 * sds**2 / lam
            A = np.linalg.inv(Kc + np.diag(n))
            mean = Kc @ A @ y
            V = np.linalg.inv(np.linalg.inv(Kc) + np.diag(1 / n))
            r = ((y - mean) ** 2 + np.diag(V)) / (a2 * sds**2)
            shape, rate = (nus + 1) / 2, (nus + r) / 2
            lam = shape / rate
        log_lam = digamma(shape) - np.log(rate)
        expected = np.sum(-0.5 * np.log(2 * np.pi * a2 * sds**2) + 0.5 * log_lam - 0.5 * lam * r)
        log_prior = np.sum(nus / 2 * np.log(nus / 2) - gammaln(nus / 2)
                           + (nus / 2 - 1) * log_lam - nus / 2 * lam)
        entropy = stats.gamma(shape, scale=1 / rate).entropy().sum()
        Kinv = np.linalg.inv(Kc)
        kl = 0.5 * (np.trace(Kinv @ V) + mean @ Kinv @ mean - k
                    + np.linalg.slogdet(Kc)[1] - np.linalg.slogdet(V)[1])
        Kx = K[k:, :k]
        loc = Kx @ A @ y
        iqr = stats.t.ppf(0.75, nus) / stats.norm.ppf(0.75)
        var = np.diag(K[k:, k:] - Kx @ A @ Kx.T) + a2 * sds**2 * iqr**2
        out.append((expected + log_prior + entropy - kl, loc, var))
    elbo, loc, var = (np.array(v) for v in zip(*out))
    return elbo, loc, var


def test_prior_members_student_draws_are_the_mean_field_answer(monkeypatch):
    """The prior's member's Student-t draws against :func:`_student_answer`, draw by draw:
    evidence lower bounds, then at the queries the mean and second moment of the draws
    weighted by their bounds; their weight "rho" against the Gaussian draws and the
    member's evidence from the two kinds' full log evidence."""
    monkeypatch.setattr(kernels, "PRIOR_DRAWS", 6)
    monkeypatch.setattr(kernels, "PRIOR_BIMODAL", 0.0)
    monkeypatch.setattr(kernels, "PRIOR_STUDENT_DRAWS", 5)
    monkeypatch.setattr(kernels, "PRIOR_KEEP", 0.0)
    k, m = 14, 4
    xc, yc, xq = _task(k=k, m=m, d=2, seed=5)
    yc = yc.copy()
    yc[[2, 9]] += [4.0, -3.0]                                      # two outliers
    yc = (yc - yc.mean()) / yc.std()
    pf = kernels._prior_fit(_t(xc), _t(yc))
    got = kernels._student_moments(pf["student"], _t(xq))[:, 0].numpy()

    g, C, sd = _replayed_draws(xc, xq, 6, 5)
    nu = torch.randint(2, 11, (5,), generator=g).double().numpy()
    elbo, loc, var = _student_answer(C, sd, nu, yc, kernels.STUDENT_ITERS)
    evidence = np.logaddexp.reduce(elbo) - np.log(5)
    np.testing.assert_allclose(float(pf["student"]["evidence"][0]), evidence, rtol=1e-7)
    w = np.exp(elbo - elbo.max())
    w /= w.sum()
    mean = w @ loc
    np.testing.assert_allclose(got, [mean, w @ (var + loc**2)], rtol=1e-6, atol=1e-7)

    gauss, profile = _gaussian_evidence(pf)                   # the Gaussian draws
    share = kernels.PRIOR_STUDENT
    both = np.logaddexp(np.log(share) + evidence, np.log(1 - share) + gauss)
    assert 0.01 < np.exp(np.log(share) + evidence - both) < 0.99     # both kinds count
    np.testing.assert_allclose(float(pf["rho"][0]), np.exp(np.log(share) + evidence - both),
                               rtol=1e-6)
    np.testing.assert_allclose(float(pf["evidence"][0]), profile + both - gauss,
                               rtol=1e-7)


def test_prior_member_sharpens_the_gaussian_on_small_gp_draw_contexts(monkeypatch):
    """On 40 GP draws of the meta-training prior (d = 3, k = 10), the model average with
    the prior's member scores a lower mean Gaussian CRPS than without it (fixed seeds; on
    the bench's families: docs/functions.md); contexts of fewer than 2 (d + 1) or more than
    PRIOR_MAX_K points, and contexts with no used column, get the features they had
    without it."""
    from skdiffusion.bench.predictive import make_function_tasks
    X, Y = make_function_tasks("gp", 40, 10, 3, 25, 123)
    x = torch.as_tensor(X)
    y = torch.as_tensor((Y - Y[:, :10].mean(1, keepdims=True)) / Y[:, :10].std(1, keepdims=True))
    c = torch.arange(35)[None].expand(40, -1) < 10
    feats, crps = {}, {}
    for member in (True, False):
        monkeypatch.setattr(kernels, "PRIOR_MEMBER", member)
        feats[member] = f = gp_features(x, y, c, ard=True)[:, 10:]
        crps[member] = _gaussian_crps(y[:, 10:].numpy(), f[..., -2].numpy(),
                                      f[..., -1].exp().numpy()).mean()
    assert crps[True] < 0.97 * crps[False], crps
    monkeypatch.setattr(kernels, "PRIOR_MEMBER", True)
    monkeypatch.setattr(kernels, "PRIOR_MAX_K", 9)
    torch.testing.assert_close(gp_features(x, y, c, ard=True)[:, 10:], feats[False], rtol=0, atol=0)
    monkeypatch.setattr(kernels, "PRIOR_MAX_K", 100)
    seven = torch.arange(35)[None].expand(40, -1) < 7                 # 7 < 2 (3 + 1) points
    x0, short = torch.zeros_like(x[:2]), gp_features(x, y, seven, ard=True)
    with_member = gp_features(x0, y[:2], c[:2], ard=True)
    monkeypatch.setattr(kernels, "PRIOR_MEMBER", False)
    torch.testing.assert_close(short, gp_features(x, y, seven, ard=True), rtol=0, atol=0)
    torch.testing.assert_close(with_member, gp_features(x0, y[:2], c[:2], ard=True), rtol=0, atol=0)


def test_prior_members_heteroscedastic_draws_sharpen_heteroscedastic_contexts(monkeypatch):
    """On 40 heteroscedastic GP draws of the bench (d = 1, k = 20), the model average whose
    prior's member has PRIOR_HET heteroscedastic draws scores a lower mean Gaussian CRPS
    than with homoscedastic draws only (fixed seeds; on the bench's families:
    docs/functions.md)."""
    from skdiffusion.bench.predictive import make_function_tasks
    X, Y = make_function_tasks("heteroscedastic", 40, 20, 1, 25, 5)
    x = torch.as_tensor(X)
    y = torch.as_tensor((Y - Y[:, :20].mean(1, keepdims=True)) / Y[:, :20].std(1, keepdims=True))
    c = torch.arange(45)[None].expand(40, -1) < 20
    share, crps = kernels.PRIOR_HET, {}
    assert share > 0
    for het in (share, 0.0):
        monkeypatch.setattr(kernels, "PRIOR_HET", het)
        f = gp_features(x, y, c, ard=True)[:, 20:]
        crps[het] = _gaussian_crps(y[:, 20:].numpy(), f[..., -2].numpy(),
                                   f[..., -1].exp().numpy()).mean()
    assert crps[share] < 0.97 * crps[0.0], crps
