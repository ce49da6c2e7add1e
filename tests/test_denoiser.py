"""The set denoiser's invariances: targets independent, context order irrelevant.

Invariances are checked in float64, so that their tolerance is far below any real
breach and far above rounding (in float32, summing a permuted context rounds outputs
of size ~20 differently by ~1e-5)."""

import pytest
import torch

from skdiffusion.denoiser import SetDenoiser, attention_mask, pad_features
from skdiffusion.diffusion import NoiseSchedule
from skdiffusion.inference import make_denoise_fn

F, K, M = 6, 7, 5
ABAR = NoiseSchedule(100).abar


@pytest.fixture(scope="module", params=["fixed", "evidence", "centred", None],
                ids=["baseline_fixed", "baseline_evidence", "baseline_centred", "pure"])
def model(request):
    torch.manual_seed(0)
    penalty = request.param if request.param in ("fixed", "evidence") else "fixed"
    m = SetDenoiser(max_features=F, n_layer=2, n_embd=32, n_head=2,
                    linear_baseline=request.param is not None, abar=ABAR,
                    ridge_penalty=penalty, centred_dof=request.param == "centred").eval()
    torch.nn.init.normal_(m.read_out.weight)  # make the transformer's part count
    return m.double()


def task(seed, k=K, m=M, d=4):
    g = torch.Generator().manual_seed(seed)
    x = pad_features(torch.randn(k + m, d, generator=g, dtype=torch.float64), F)
    y = torch.randn(k + m, generator=g, dtype=torch.float64)
    return x, y, torch.arange(k + m) < k, torch.randint(1, 100, (k + m,), generator=g)


def forward(model, x, y, is_ctx, t):
    return model(x[None], y[None], is_ctx[None], t[None])[0]


def test_attention_mask_structure():
    mask = attention_mask(torch.tensor([[True, True, False, False]]))[0, 0]
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)


@torch.no_grad()
def test_target_output_independent_of_other_targets(model):
    x, y, c, t = task(0)
    full = forward(model, x, y, c, t)[K:]
    for j in range(M):  # each target alone with the context
        keep = torch.cat([torch.arange(K), torch.tensor([K + j])])
        alone = forward(model, x[keep], y[keep], c[keep], t[keep])[-1]
        torch.testing.assert_close(alone, full[j], rtol=0, atol=1e-10)
    perm = torch.cat([torch.arange(K), K + torch.randperm(M, generator=torch.Generator().manual_seed(1))])
    shuffled = forward(model, x[perm], y[perm], c[perm], t[perm])[K:]
    torch.testing.assert_close(shuffled, full[perm[K:] - K], rtol=0, atol=1e-10)


@torch.no_grad()
def test_output_invariant_to_context_permutation(model):
    x, y, c, t = task(1)
    full = forward(model, x, y, c, t)[K:]
    perm = torch.cat([torch.randperm(K, generator=torch.Generator().manual_seed(2)), torch.arange(K, K + M)])
    torch.testing.assert_close(forward(model, x[perm], y[perm], c[perm], t[perm])[K:], full,
                               rtol=0, atol=1e-10)


@torch.no_grad()
def test_output_depends_on_context_y(model):
    x, y, c, t = task(2)
    y2 = y.clone()
    y2[:K] += 1.0
    diff = (forward(model, x, y2, c, t)[K:] - forward(model, x, y, c, t)[K:]).abs()
    assert diff.min() > 1e-4


@torch.no_grad()
def test_zero_padding_is_the_identity(model):
    g, f64 = torch.Generator().manual_seed(3), torch.float64
    x_ctx, x_q = torch.randn(K, 3, generator=g, dtype=f64), torch.randn(M, 3, generator=g, dtype=f64)
    y_ctx = torch.randn(K, generator=g, dtype=f64)
    y_t = torch.randn(M, 2, generator=g, dtype=f64)
    a = make_denoise_fn(model, pad_features(x_ctx, F)[None], y_ctx[None],
                        pad_features(x_q, F)[None])(y_t[None], 40)
    zeros = torch.zeros(K + M, F - 3, dtype=f64)
    b = make_denoise_fn(model, torch.cat([x_ctx, zeros[:K]], 1)[None], y_ctx[None],
                        torch.cat([x_q, zeros[K:]], 1)[None], chunk_size=3)(y_t[None], 40)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="max_features"):
        pad_features(torch.zeros(2, F + 1), F)


@torch.no_grad()
def test_chunking_does_not_change_outputs(model):
    x, y, c, t = task(4, m=0)
    x_q = pad_features(torch.randn(9, 4, generator=torch.Generator().manual_seed(5),
                                   dtype=torch.float64), F)
    y_t = torch.randn(9, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    a = make_denoise_fn(model, x[None], y[None], x_q[None], chunk_size=1000)(y_t[None], 10)
    b = make_denoise_fn(model, x[None], y[None], x_q[None], chunk_size=4)(y_t[None], 10)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@torch.no_grad()
def test_linear_baseline_starts_at_least_squares():
    """Untrained (zero read-out), the y0 prediction from pure noise on a noiseless linear
    task is the in-context ridge fit, i.e. (almost) exact."""
    torch.manual_seed(0)
    m = SetDenoiser(max_features=F, n_layer=1, n_embd=16, n_head=2, abar=ABAR,
                    prediction_type="sample").eval()
    g = torch.Generator().manual_seed(7)
    x = pad_features(torch.randn(1, 30, 4, generator=g), F)
    y = x @ pad_features(torch.randn(1, 4, generator=g), F)[0]
    is_ctx = torch.arange(30)[None] < 20
    y_in = torch.where(is_ctx, y, torch.randn(1, 30, generator=g))
    pred = m(x, y_in, is_ctx, torch.full((1, 30), 100))[0, 20:]
    torch.testing.assert_close(pred, y[0, 20:], rtol=0, atol=0.05)


def test_evidence_penalty_matches_bayesian_ridge():
    """On informative contexts the evidence-maximizing penalty is scikit-learn's
    BayesianRidge (no intercept): its pseudo-counts move coefficients by < 0.5 % here."""
    from sklearn.linear_model import BayesianRidge

    from skdiffusion.denoiser import fit_ridge
    g = torch.Generator().manual_seed(3)
    x = pad_features(torch.randn(4, 60, 3, generator=g, dtype=torch.float64), F)
    w = torch.tensor([[1.0, -0.5, 0.2], [0.5, 0.5, 0.5], [2.0, 0.0, 0.0], [0.3, 0.3, -1.0]],
                     dtype=torch.float64)
    y = (x[..., :3] @ w[..., None])[..., 0] + torch.tensor([0.1, 1.0, 0.5, 2.0])[:, None] * \
        torch.randn(4, 60, generator=g, dtype=torch.float64)
    coefs, _, noise_var, _ = fit_ridge(x, y, torch.ones(4, 60, dtype=torch.bool),
                                       penalty="evidence")
    for i in range(4):
        br = BayesianRidge(fit_intercept=False, tol=1e-12, max_iter=10_000).fit(x[i, :, :3], y[i])
        torch.testing.assert_close(coefs[i, :3, 0], torch.tensor(br.coef_), rtol=1e-2, atol=1e-3)
        assert noise_var[i, 0].item() == pytest.approx(1 / br.alpha_, rel=0.02)


def test_centred_baseline_is_least_squares_with_an_intercept():
    """On a centred context with a negligible penalty, the ``centred`` baseline is least
    squares with an intercept: noise variance RSS / (k - 1 - d) and variance factor
    1 + z^T (Z^T Z)^-1 z at a query z = (1, x). Uncentred (the shipped models' baseline),
    one degree of freedom and the intercept's leverage 1 / k are missing."""
    from skdiffusion.denoiser import fit_ridge, ridge_features_at
    g = torch.Generator().manual_seed(11)
    k, d = 12, 3
    X = torch.randn(k + 1, d, generator=g, dtype=torch.float64)
    y = 2.0 + X @ torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64) + \
        torch.randn(k + 1, generator=g, dtype=torch.float64)
    Z = torch.cat([torch.ones(k + 1, 1, dtype=torch.float64), X], 1)
    beta = torch.linalg.lstsq(Z[:k], y[:k, None]).solution[:, 0]
    rss = ((y[:k] - Z[:k] @ beta) ** 2).sum()
    factor = 1 + Z[k] @ torch.linalg.inv(Z[:k].T @ Z[:k]) @ Z[k]
    xc, yc = pad_features(X - X[:k].mean(0), F)[None], (y - y[:k].mean())[None]
    ctx = (torch.arange(k + 1) < k)[None]
    for centred, dof, lev_extra in ((True, k - 1 - d, 0.0), (False, k - d, -1 / k)):
        fit = fit_ridge(xc, yc, ctx, lambdas=(0.0,), centred=centred)
        mean, lev, noise_var = ridge_features_at(fit, xc[:, k:])[0, 0]
        assert mean.item() + y[:k].mean().item() == pytest.approx((Z[k] @ beta).item(), abs=1e-2)
        assert noise_var.item() == pytest.approx(rss.item() / dof, rel=5e-3)
        assert 1 + lev.item() == pytest.approx(factor.item() + lev_extra, rel=5e-3)


def test_evidence_penalty_without_context_is_the_prior():
    """No context: penalty 1, zero fit, unit noise, so the baseline is N(0, 1 + |x|^2)."""
    from skdiffusion.denoiser import evidence_penalty
    zero = torch.zeros(2, F, F, dtype=torch.float64)
    lam = evidence_penalty(zero, torch.zeros(2, F, 1, dtype=torch.float64),
                           torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(lam, torch.ones(2, 1, 1, dtype=torch.float64))


def test_unknown_ridge_penalty_is_rejected():
    with pytest.raises(ValueError, match="ridge_penalty"):
        SetDenoiser(max_features=F, abar=ABAR, ridge_penalty="loo")


def test_linear_baseline_needs_schedule():
    with pytest.raises(ValueError, match="abar"):
        SetDenoiser(max_features=F)


@torch.no_grad()
@pytest.mark.parametrize("k", [0, 1, 7])
def test_cached_context_path_equals_full_forward(model, k):
    """encode_context + forward_targets (used for sampling) is the same function as the
    masked full forward (used for training)."""
    x, y, c, _ = task(5, k=k, m=M)
    t = torch.full((K + M,), 37)[: k + M]
    full = model(x[None], y[None], c[None], t[None])[0, k:]
    cache = model.encode_context(x[None, :k], y[None, :k])
    cached = model.forward_targets(cache, x[None, k:], y[None, k:], 37)[0]
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-10)


@pytest.mark.parametrize("ptype", ["epsilon", "v", "sample"])
@pytest.mark.parametrize("t", [1, 30, 70, 99])  # at t=100 eps scale hits its 1e-3 floor
def test_residual_scale_is_the_residual_std_under_the_gaussian(ptype, t):
    """If y0 ~ N(m, s^2) exactly, (target - Gaussian baseline) / residual_scale has unit
    variance: the loss units the network is trained in."""
    from skdiffusion.denoiser import gaussian_baseline, residual_scale
    n, m, s2 = 200_000, 0.3, 0.04
    sch = NoiseSchedule(100)
    g = torch.Generator().manual_seed(t)
    y0 = m + s2 ** 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    eps = torch.randn(n, generator=g, dtype=torch.float64)
    y_t = sch.q_sample(y0, t, eps)
    feats = torch.zeros(n, 6, dtype=torch.float64)
    feats[:, 0], feats[:, -1] = m, s2          # ridge mean m, leverage 0, noise variance s^2
    abar_t = sch.abar[t].expand(n)
    resid = sch.target(y0, eps, t, ptype) - gaussian_baseline(feats, abar_t, y_t, ptype, cap=10.0, var_cap=10.0)
    z = resid / residual_scale(feats, abar_t, ptype, cap=10.0, var_cap=10.0)
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01


@pytest.mark.parametrize("cap", [10.0, 100.0])
def test_baseline_variance_is_capped_at_variance_cap(cap):
    """Far outside a tiny context the baseline variance noise * (1 + leverage) exceeds
    any cap; at t = T (y_t carries nothing) the v residual scale is then sqrt(cap)."""
    from skdiffusion.denoiser import residual_scale
    sch = NoiseSchedule(100)
    feats = torch.tensor([[0.0, 0.0, 0.0, 1e6, 0.5], [0.0, 0.0, 0.0, 1.0, 0.5]],
                         dtype=torch.float64)             # leverage 1e6 and 1, noise var 0.5
    abar_T = sch.abar[100].expand(2).double()
    scale = residual_scale(feats, abar_T, "v", cap=10.0, var_cap=cap)
    s2 = torch.tensor([cap, 1.0])                          # capped; 0.5 * (1 + 1) uncapped
    expected = (s2 / (abar_T * s2 + 1 - abar_T)).sqrt()
    torch.testing.assert_close(scale, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("ptype", ["epsilon", "v", "sample"])
def test_mixture_denoiser_is_the_posterior_mean_by_quadrature(ptype):
    """For y0 ~ sum_c w_c N(m_c, v_c) and y_t = sqrt(abar) y0 + sqrt(1 - abar) eps, the
    mixture denoiser is E[target | y_t] with E[y0 | y_t] integrated on a fine grid, at
    several noise levels and y_t; with one component it is the Gaussian denoiser."""
    from skdiffusion.denoiser import gaussian_denoiser, mixture_denoiser
    w, m, v = (torch.tensor(a, dtype=torch.float64) for a in
               ([0.5, 0.3, 0.2], [-1.0, 0.5, 2.0], [0.3, 0.01, 0.5]))
    grid = torch.linspace(-10, 10, 400_001, dtype=torch.float64)
    prior = (w * torch.exp(-0.5 * (grid[:, None] - m) ** 2 / v) / v.sqrt()).sum(-1)
    y_t = torch.tensor([-2.0, 0.1, 0.6, 1.5], dtype=torch.float64)
    mixture = torch.stack([w, m, v])[None].expand(4, 3, 3)
    for abar in (0.99, 0.5, 0.05):
        a, b2 = abar ** 0.5, 1 - abar
        like = torch.exp(-0.5 * (y_t[:, None] - a * grid) ** 2 / b2)     # (4, grid)
        y0 = (like * prior * grid).sum(-1) / (like * prior).sum(-1)
        eps = (y_t - a * y0) / b2 ** 0.5
        want = {"sample": y0, "epsilon": eps, "v": a * eps - b2 ** 0.5 * y0}[ptype]
        abar_t = torch.full((4,), abar, dtype=torch.float64)
        got = mixture_denoiser(mixture, abar_t, y_t, ptype)
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8)
        one = torch.stack([torch.ones(1), m[1:2], v[1:2]]).double()[None].expand(4, 3, 1)
        torch.testing.assert_close(mixture_denoiser(one, abar_t, y_t, ptype),
                                   gaussian_denoiser(m[1], v[1], abar_t, y_t, ptype))
