"""Task priors and the shared context standardization."""

import numpy as np
import pytest
import torch
from sklearn.preprocessing import StandardScaler

from skdiffusion.priors import PRIORS, context_stats, make_prior, sample_tasks


def test_context_stats_match_standard_scaler():
    rng = np.random.default_rng(0)
    X = rng.normal(3.0, 2.0, size=(12, 4))
    X[:, 2] = 5.0                                       # constant column
    for k in (1, 2, 5, 12):
        ref = StandardScaler().fit(X[:k])
        is_ctx = torch.arange(12)[None] < k
        mean, scale = context_stats(torch.tensor(X)[None], is_ctx)
        np.testing.assert_allclose(mean[0, 0].numpy(), ref.mean_, rtol=1e-12)
        np.testing.assert_allclose(scale[0, 0].numpy(), ref.scale_, rtol=1e-12)


def test_context_stats_without_context_is_identity():
    mean, scale = context_stats(torch.randn(2, 5, 3), torch.zeros(2, 5, dtype=torch.bool))
    assert torch.all(mean == 0) and torch.all(scale == 1)


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_each_family_draws_finite_standardized_tasks(name):
    g = torch.Generator().manual_seed(0)
    b = sample_tasks(make_prior(name), 64, 30, 8, g, min_features=2)
    assert b.x.shape == (64, 30, 8) and b.y.shape == (64, 30)
    assert torch.isfinite(b.x).all() and torch.isfinite(b.y).all()
    assert ((2 <= b.n_features) & (b.n_features <= 8)).all()
    # padding columns stay exactly zero
    cols = torch.arange(8)[None, None] >= b.n_features[:, None, None]
    assert torch.all(b.x[cols.expand_as(b.x)] == 0)
    # tasks with >= 2 context points have standardized context y (mean 0, std 1 unless constant)
    k = b.is_context.sum(1)
    for i in torch.nonzero(k >= 2).flatten()[:10]:
        yc = b.y[i, b.is_context[i]]
        assert abs(yc.mean()) < 1e-4 and (abs(yc.std(unbiased=False) - 1) < 1e-4 or yc.abs().max() < 1e-4)


def test_context_sizes_span_zero_to_n_minus_one():
    b = sample_tasks(make_prior("linear"), 2000, 10, 3, torch.Generator().manual_seed(1))
    k = b.is_context.sum(1)
    assert k.min() == 0 and k.max() == 9
    b = sample_tasks(make_prior("linear"), 500, 10, 3, torch.Generator().manual_seed(1),
                     max_context=6, min_context=4)
    assert set(b.is_context.sum(1).tolist()) == {4, 5, 6}


def test_priors_are_deterministic_under_generator():
    p = make_prior({"mixture": [("linear", 1.0), ("decision_tree", 1.0)]})
    a = sample_tasks(p, 8, 12, 4, torch.Generator().manual_seed(5))
    b = sample_tasks(p, 8, 12, 4, torch.Generator().manual_seed(5))
    assert torch.equal(a.y, b.y) and torch.equal(a.x, b.x)


def test_noisy_linear_noise_level():
    p = make_prior(("noisy_linear", {"noise_range": (0.5, 0.5)}))
    X = torch.randn(4000, 20, 3, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    y = p.sample_y(X, g)
    # residual of the exact fit per task: variance 0.25 * (n - d) / n on average
    w = torch.linalg.lstsq(X, y[..., None]).solution
    res = (y[..., None] - X @ w).pow(2).sum(1).mean() / (20 - 3)
    assert abs(res.item() - 0.25) < 0.01


def test_sparse_linear_uses_few_features():
    p = make_prior(("sparse_linear", {"n_nonzero": 2}))
    X = torch.randn(50, 30, 6, generator=torch.Generator().manual_seed(0))
    y = p.sample_y(X, torch.Generator().manual_seed(1))
    w = torch.linalg.lstsq(X, y[..., None]).solution[..., 0]
    assert ((w.abs() > 1e-4).sum(1) <= 2).all()


def test_unknown_prior_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown prior"):
        make_prior("gaussian_process")


def _moments(e):
    z = (e - e.mean(1, keepdim=True)) / e.std(1, keepdim=True)
    return (z**3).mean().item(), (z**4).mean().item()


@pytest.mark.parametrize("kind, check", [
    ("gaussian", lambda s, k: abs(s) < 0.05 and abs(k - 3) < 0.15),
    ("student_t", lambda s, k: k > 4.0),
    ("skewed", lambda s, k: abs(s) > 0.5),
    ("heteroscedastic", lambda s, k: k > 3.5),
])
def test_noise_families_have_their_shape(kind, check):
    from skdiffusion.priors import add_noise
    g = torch.Generator().manual_seed(0)
    X = torch.randn(400, 200, 3, generator=g)
    e = add_noise(torch.zeros(400, 200, dtype=X.dtype), X, g, kind, torch.full((400, 1), 0.5))
    if kind == "skewed":  # per task the sign is random: skewness of |per-task skew|
        z = (e - e.mean(1, keepdim=True)) / e.std(1, keepdim=True)
        skew, kurt = (z**3).mean(1).abs().mean().item(), None
    else:
        skew, kurt = _moments(e)
    assert check(skew, kurt)


def test_bimodal_noise_has_two_branches():
    from skdiffusion.priors import add_noise
    g = torch.Generator().manual_seed(1)
    X = torch.randn(200, 100, 2, generator=g)
    e = add_noise(torch.zeros(200, 100), X, g, "bimodal", torch.full((200, 1), 0.05))
    # the gap is at least 0.5 and the noise 0.05: almost no point lies near zero
    assert (e.abs() < 0.25).float().mean() < 0.01


def test_functions_prior_draws_varied_inputs_and_unit_scale_signals():
    from skdiffusion.priors import mixed_inputs
    g = torch.Generator().manual_seed(2)
    X = mixed_inputs(300, 40, 6, g)
    col = X.transpose(1, 2).reshape(-1, 40)
    is_binary = ((col == 0) | (col == 1)).all(1)
    is_integer = (col == col.round()).all(1) & ~is_binary
    repeated = torch.tensor([len(torch.unique(x, dim=0)) < 40 for x in X])
    assert is_binary.float().mean() > 0.1 and is_integer.float().mean() > 0.1
    assert 0.1 < repeated.float().mean() < 0.4
    b = sample_tasks(make_prior(("functions", {"noise_range": (0.01, 0.02)})), 64, 60, 6, g,
                     max_context=50)
    assert torch.isfinite(b.y).all()
    with pytest.raises(ValueError, match="unknown function families"):
        make_prior(("functions", {"families": {"splines": 1.0}}))


def test_gp_draws_survive_repeated_and_large_inputs():
    """Repeated rows and large-valued columns under a linear kernel make the float32
    kernel matrix numerically singular; the draw must still be finite with the GP's
    covariance (rows that repeat get equal values up to the jitter)."""
    from skdiffusion.priors import GPFunction

    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 150, 4, generator=g) * torch.tensor([1.0, 1.0, 30.0, 300.0])
    X[:, 75:] = X[:, :75]                                   # every row twice
    y = GPFunction(p_linear=1.0).sample_y(X, g)
    assert torch.isfinite(y).all()
    gap = (y[:, 75:] - y[:, :75]).abs().max() / y.abs().max()
    assert gap < 0.05


def test_gp_kernel_between_two_sets_is_the_block_of_the_covariance_over_both():
    """The hyperparameters do not depend on the number of points, so the kernel between
    points and the context (the prior's member in skdiffusion.kernels) is the block of
    the covariance drawn over both, and its diagonal is the covariance's."""
    from skdiffusion.priors import GPFunction

    X = torch.randn(16, 30, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    X[:8, :, 3] = 0                                         # an unused column in half the tasks
    prior = GPFunction(p_linear=0.5)
    K = prior.covariance(X, torch.Generator().manual_seed(1))
    h = prior.hyperparameters(X[:, :12], torch.Generator().manual_seed(1))
    assert (h["rel"][:8, 3] == 0).all() and h["lin"].std() > 0 and h["rbf"].std() > 0
    torch.testing.assert_close(GPFunction.kernel(h, X[:, 12:], X[:, :12]), K[:, 12:, :12])
    torch.testing.assert_close(GPFunction.kernel_diagonal(h, X), K.diagonal(dim1=1, dim2=2))


def test_gp_kernel_is_its_closed_form_for_every_kind():
    """Each task's kernel against its formula, entry by entry in NumPy: RBF exp(-r^2 / 2)
    or Matern-5/2 (1 + s + s^2 / 3) exp(-s), s = sqrt(5) r, of the distance r scaled by
    the lengthscales over the relevant columns, plus x . x' / d for a linear part; tasks
    of all four kinds in one batch, in mixed order."""
    from skdiffusion.priors import GPFunction

    g = torch.Generator().manual_seed(3)
    Xa = torch.randn(24, 7, 3, dtype=torch.float64, generator=g)
    Xb = torch.randn(24, 5, 3, dtype=torch.float64, generator=g)
    h = GPFunction(p_linear=0.5).hyperparameters(Xa, g)
    kinds = {(int(a), int(b)) for a, b in zip(h["rbf"].flatten(), h["lin"].flatten())}
    assert kinds == {(0, 0), (0, 1), (1, 0), (1, 1)} and (h["rel"] == 0).any()
    got = GPFunction.kernel(h, Xa, Xb).numpy()
    for i in range(24):
        rel, ls, d = (h[key][i].numpy() for key in ("rel", "ls", "d"))
        a, b = Xa[i].numpy() * rel, Xb[i].numpy() * rel
        r = np.sqrt((((a[:, None] - b[None]) / ls) ** 2).sum(-1))
        s = np.sqrt(5) * r
        K = np.exp(-r**2 / 2) if h["rbf"][i] else (1 + s + s**2 / 3) * np.exp(-s)
        K = K + h["lin"][i].item() * (a @ b.T) / d
        np.testing.assert_allclose(got[i], K, rtol=1e-10, atol=1e-12)


def test_recorded_truth_rebuilds_each_draw_and_changes_nothing():
    """``truth`` holds the law each task was drawn from: the GP draw, rebuilt from y (noise
    1e-6) by its shift and scale and whitened by its covariance, is standard normal; and
    recording leaves every draw as it was."""
    from skdiffusion.priors import Functions

    prior = Functions(families={"gp": 1.0}, noise_weights={"gaussian": 1.0},
                      noise_range=(1e-6, 1e-6))
    X = torch.randn(64, 30, 3, generator=torch.Generator().manual_seed(0))
    truth = {}
    y = prior.sample_y(X, torch.Generator().manual_seed(1), truth)
    assert torch.equal(y, prior.sample_y(X, torch.Generator().manual_seed(1)))
    draw = (y * truth["scale"] + truth["shift"]).double()
    z = torch.linalg.solve_triangular(torch.linalg.cholesky(truth["cov"]), draw[..., None],
                                      upper=False)[..., 0]
    assert abs(z.mean()) < 0.05 and abs(z.var() - 1) < 0.06          # 1,920 values
    assert torch.equal(truth["sd"], truth["sigma"].expand(64, 30))


@pytest.mark.parametrize("kind", ["gaussian", "heteroscedastic", "bimodal"])
def test_recorded_noise_law_standardizes_the_noise(kind):
    from scipy import stats

    from skdiffusion.priors import add_noise
    g = torch.Generator().manual_seed(3)
    X = torch.randn(100, 50, 2, generator=g)
    truth = {}
    e = add_noise(torch.zeros(100, 50), X, g, kind, torch.full((100, 1), 0.3), truth)
    if kind == "bimodal":
        e = e - truth["gap"] * truth["branch"]
    z = (e / truth["sd"]).flatten().numpy()
    assert stats.kstest(z, "norm").pvalue > 0.01
    if kind == "heteroscedastic":  # the scale varies from point to point
        assert truth["sd"].std(1).min() > 0


def test_recorded_truth_of_a_mixture_of_families():
    """Tasks of families without a recorded covariance get NaN rows."""
    from skdiffusion.priors import Functions

    prior = Functions(families={"gp": 0.5, "mlp": 0.5}, noise_weights={"student_t": 1.0})
    truth = {}
    prior.sample_y(torch.randn(40, 12, 2, generator=torch.Generator().manual_seed(4)),
                   torch.Generator().manual_seed(5), truth)
    gp_rows = ~torch.isnan(truth["cov"]).any(-1).any(-1)
    assert 0 < gp_rows.sum() < 40 and truth["cov"].shape == (40, 12, 12)
    assert torch.isin(truth["df"], torch.arange(2.0, 11.0)).all()
