"""The benchmark suite: its building blocks exactly, and the whole report on a tiny model."""

import json
import math

import numpy as np
import pytest

from skdiffusion.bench.__main__ import Sizes, run
from skdiffusion.bench.baselines import baselines_for, predict_baselines
from skdiffusion.bench.metrics import (bootstrap_band, mc_corrected_sq_error,
                                       probabilistic_scores)
from skdiffusion.bench.tasks import FAMILIES, make_tasks


def test_y_scale_variant_scales_data_and_bayes_exactly():
    base = make_tasks("linear", 20, 4, 3, seed=1)
    scaled = make_tasks("linear", 20, 4, 3, seed=1, variant="y * 10")
    np.testing.assert_allclose(scaled.y_ctx, 10 * base.y_ctx)
    for a, b in zip(scaled.bayes(), base.bayes()):
        np.testing.assert_allclose(a, 10 * b, rtol=1e-10)


def test_irrelevant_features_bayes_uses_only_the_relevant_ones():
    t = make_tasks("linear", 2000, 12, 6, seed=2, variant="d more, irrelevant features")
    assert t.relevant == 3
    mean, std = t.bayes()
    # with 12 points and 3 relevant features, the oracle is near the noise floor 0.1^2
    assert np.mean((mean - t.y_q) ** 2) < 2 * 0.1**2
    assert np.all(std >= 0.1)


@pytest.mark.parametrize("family", FAMILIES)
def test_families_shapes_and_no_context_baselines(family):
    t = make_tasks(family, 30, 0, 4, seed=3)
    assert t.X_ctx.shape == (30, 0, 4) and t.X_q.shape == (30, 1, 4)
    preds = predict_baselines(baselines_for(family), t)
    assert all(np.all(p == 0.0) for p in preds.values())  # the prior mean


def test_mc_correction_is_unbiased():
    rng = np.random.default_rng(0)
    mu, y = rng.standard_normal(20000), rng.standard_normal(20000)
    samples = mu[:, None] + 2.0 * rng.standard_normal((20000, 4))
    exact = np.mean((mu - y) ** 2)
    naive = np.mean((samples.mean(1) - y) ** 2)          # inflated by 4 / 4 = 1
    corrected = np.mean(mc_corrected_sq_error(samples, y))
    assert abs(naive - exact - 1.0) < 0.1
    assert abs(corrected - exact) < 0.1


def test_probabilistic_scores_of_an_exact_gaussian():
    rng = np.random.default_rng(1)
    y = rng.standard_normal(20000)
    zeros, ones = np.zeros_like(y), np.ones_like(y)
    closed = probabilistic_scores(y, zeros, ones)
    ens = probabilistic_scores(y, zeros, ones, samples=rng.standard_normal((20000, 8)))
    crps_n01 = 1 / math.sqrt(math.pi)  # E CRPS(N(0, 1), y) for y ~ N(0, 1)
    assert abs(closed["crps"] - crps_n01) < 0.015  # ~5 standard errors
    assert abs(ens["crps"] - crps_n01) < 0.015  # the fair estimator has no 1/m bias
    for level in (50, 80, 90, 95):
        assert abs(closed[f"cov{level}"] - level / 100) < 0.01


def test_bootstrap_band_brackets_the_mean():
    v = np.random.default_rng(2).exponential(size=500)
    lo, hi = bootstrap_band(v)
    assert lo < v.mean() < hi and hi - lo < 0.3


def test_tiny_report_end_to_end(tmp_path, tiny, tiny_model, monkeypatch):
    sizes = Sizes(families=("linear", "decision_tree"), ds=(3,), k_grid={3: (0, 5)}, tasks=40,
                  samples=4, variants=("none", "y * 10"), robust_tasks=8, calibration_ks=(4,),
                  calibration_tasks=8, calibration_samples=8, sampler_tasks=8,
                  ddim_steps=(2, 1000), sample_counts=(2,), datasets=("linnerud Pulse",),
                  real_sizes=(None,), predictive_families=("bimodal",), predictive_ds=(1,),
                  predictive_ks=(10,), predictive_tasks=2, predictive_queries=5)
    tiny = {**tiny, "model": tiny_model}  # JSON-able, as the bench CLI takes it
    text = run(tiny, sizes, str(tmp_path), "tiny", log=lambda *a: None)
    for name in ("REPORT.md", "report.json", "curves_linear.png", "curves_decision_tree.png",
                 "robustness.png", "reliability.png", "samplers.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "REPORT.md").read_text() == text
    for section in ("In-context curves", "Robustness", "Calibration", "Samplers",
                    "Predictive distributions", "Real"):
        assert section in text
    rep = json.loads((tmp_path / "report.json").read_text())
    numbers = [v for sec in ("curves", "robustness", "calibration", "samplers", "predictive",
                             "real")
               for row in rep[sec] for key, v in row.items()
               if isinstance(v, float) and not (row.get("method") == "5-NN"
                                                and key in ("cov90", "nll"))
               and not (row.get("antithetic") and key in ("nse", "crps"))]  # see SAMPLER_INTRO
    assert numbers and all(math.isfinite(v) for v in numbers)
    # DDIM steps above T are skipped; the Bayes answer is near the noise floor at k = 5
    assert {r["steps"] for r in rep["samplers"] if r["sampler"] == "ddim"} == {2}
    bayes = [r for r in rep["curves"] if r["method"] == "Bayes" and r["k"] == 5]
    assert bayes[0]["nse"] < 0.05
    gp = [r for r in rep["predictive"] if r["method"] == "GP (ARD)"]
    assert gp[0]["crps_vs_gp"] == gp[0]["lo"] == gp[0]["hi"] == 1.0
    assert {r["method"] for r in rep["predictive"]} == {
        "skdiffusion", "BayesianRidge", "GP (ARD)", "random forest", "NGBoost", "features alone"}

    # a second run reusing this report's curve baselines refits none of them (only the
    # robustness section's) and reproduces every curve row; nor are the predictive and
    # real-data peers refitted (NGBoost stands for them)
    import skdiffusion.bench.real as real
    import skdiffusion.bench.synthetic as synthetic
    calls = []
    fit = synthetic.predict_baselines
    monkeypatch.setattr(synthetic, "predict_baselines", lambda *a: calls.append(1) or fit(*a))
    monkeypatch.setattr(real, "_ngboost", lambda *a: pytest.fail("NGBoost refitted"))
    again = tmp_path / "again"
    run(tiny, sizes, str(again), "tiny", log=lambda *a: None,
        reuse=str(tmp_path / "report.json"))
    assert len(calls) == len(sizes.variants) * len(sizes.ks(3))  # robustness points only
    curves = json.loads((again / "report.json").read_text())["curves"]
    key = lambda r: (r["family"], r["k"], r["method"])  # noqa: E731
    assert sorted(curves, key=key) == sorted(rep["curves"], key=key)
    rerun = json.loads((again / "report.json").read_text())
    timeless = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    for section in ("predictive", "real"):  # the same model: the same rows
        assert timeless(rerun[section]) == timeless(rep[section])
    with pytest.raises(ValueError, match="other sizes"):
        run(tiny, Sizes.quick(), str(again), reuse=str(tmp_path / "report.json"))


def test_sized_data_sets():
    from skdiffusion.bench.real import DATASETS
    assert DATASETS["diabetes"](100)[0].shape == (100, 10)
    assert DATASETS["diabetes"](500)[0].shape == (442, 10)   # all it has
    assert DATASETS["friedman2"](500)[0].shape == (500, 4)
    assert DATASETS["friedman1"]()[0].shape == (200, 10)
    np.testing.assert_array_equal(DATASETS["diabetes"](100)[1], DATASETS["diabetes"](100)[1])


def test_features_alone_is_the_model_with_its_network_silenced():
    """The ablation's Gaussian is what the estimator samples once the head's output layer
    is zero (the exact Gaussian denoiser of the baseline, DESIGN.md's oracle): the sample
    mean is the baseline's, and the sample std that of the sampler's chain law for the
    baseline's Gaussian (5 "beta" steps of T = 20, the last adding Var(y0 | y_t): 1-32 %
    wider than the Gaussian at standardized std 0.9-0.3)."""
    import torch
    from skdiffusion import DiffusionICLRegressor
    from skdiffusion.bench.predictive import features_alone, make_function_tasks
    from skdiffusion.diffusion import NoiseSchedule

    from .conftest import TINY_HEAD as tiny_head
    from .test_diffusion import chain_law

    X, y = make_function_tasks("heteroscedastic", 1, 30, 3, 4, seed=0)
    X, y = X[0] * 5 + 2, y[0] * 3 - 1                        # any units
    m, s, _ = features_alone(tiny_head)(X[:30], y[:30], X[30:])
    reg = DiffusionICLRegressor(**{**tiny_head, "n_samples": 4000}, random_state=0).fit(X[:30], y[:30])
    with torch.no_grad():
        for p in reg.denoiser_.head.read_out.parameters():
            p.zero_()
    samples = reg.sample(X[30:])
    np.testing.assert_allclose(samples.mean(1), m, atol=0.05 * s.max())
    scale = y[:30].std()
    schedule = NoiseSchedule(reg.model_spec_["timesteps"], reg.model_spec_["schedule"])
    n_steps = reg.sampler_settings(schedule.timesteps)["n_steps"]
    law = [chain_law(schedule, 0.0, si / scale, "ddpm", n_steps, variance="beta",
                     data_var=True)[1] * scale for si in s]
    np.testing.assert_allclose(samples.std(1), law, rtol=0.05)


def test_features_alone_is_the_silenced_models_mixture_on_a_bimodal_context():
    """Where the prior's bimodal draws fit (two clear branches f +- 1.5), the ablation
    draws the baseline's mixture of Gaussians, and the shipped model with its head's
    output zeroed samples the same law through the mixture's exact denoiser (all 50
    steps): their quantiles within each branch agree, and both put half the samples in each
    branch and few between them."""
    import torch
    from skdiffusion import DiffusionICLRegressor
    from skdiffusion.bench.predictive import features_alone

    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, (63, 1))
    y = np.sin(x[:, 0]) + np.where(rng.random(63) < 0.5, -1.5, 1.5) + 0.05 * rng.standard_normal(63)
    _, _, ablation = features_alone({}, n_samples=4000)(x[:60], y[:60], x[60:])
    reg = DiffusionICLRegressor(n_samples=4000, n_sampling_steps=50, random_state=0)
    reg.fit(x[:60], y[:60])
    with torch.no_grad():
        for p in reg.denoiser_.head.read_out.parameters():
            p.zero_()
    samples = reg.sample(x[60:])
    q = [0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95]        # within a branch each
    np.testing.assert_allclose(np.quantile(samples, q, axis=1), np.quantile(ablation, q, axis=1),
                               atol=0.1)
    for draws in (samples, ablation):
        f = np.sin(x[60:])
        assert np.all(np.abs((draws > f).mean(1) - 0.5) < 0.03)   # each branch half
        assert (np.abs(draws - f) < 0.5).mean() < 0.05            # few between them


def test_a_family_asked_alone_gets_the_tasks_of_the_full_run(monkeypatch):
    """The predictive section seeds each family's tasks by its place in FAMILIES, not in
    the families asked for: a probe of the bimodal family alone scores the same tasks as
    the report (and benchmarks/family_ceiling.py, which seeds them the same way)."""
    from skdiffusion.bench import predictive

    class Seen(Exception):
        pass

    def record(family, n_tasks, k, d, n_queries, seed, truth=None):
        raise Seen(seed)

    monkeypatch.setattr(predictive, "make_function_tasks", record)
    seeds = {}
    for families in (predictive.FAMILIES, ("bimodal",)):
        with pytest.raises(Seen) as seen:
            predictive.compare({}, families=families[::-1], ds=(3,), ks=(30,), n_tasks=1)
        seeds[families] = seen.value.args[0]
    assert seeds[("bimodal",)] == seeds[predictive.FAMILIES] == 7919 * 3 + 31 * 3 + 30
