"""End-to-end behaviour of DiffusionICLRegressor through its public API."""

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skdiffusion import DiffusionICLRegressor, ModelConfig, config, pretrained

from .conftest import TINY_MODEL


def linear_data(n=80, d=3, noise=0.1, seed=0, scale=1.0, offset=0.0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = X @ rng.standard_normal(d) + noise * rng.standard_normal(n)
    return X, scale * y + offset


@pytest.fixture
def fitted(tiny):
    X, y = linear_data()
    return DiffusionICLRegressor(random_state=0, **tiny).fit(X[:60], y[:60]), X, y


def test_learns_a_linear_task_in_context(fitted):
    reg, X, y = fitted
    assert reg.score(X[60:], y[60:]) > 0.8


def test_targets_in_any_units(tiny):
    """Standardization makes y's units irrelevant: predictions scale with y."""
    X, y = linear_data(seed=1)
    a = DiffusionICLRegressor(random_state=0, **tiny).fit(X[:60], y[:60]).predict(X[60:])
    b = DiffusionICLRegressor(random_state=0, **tiny).fit(X[:60], 1000 * y[:60] + 5).predict(X[60:])
    np.testing.assert_allclose(b, 1000 * a + 5, rtol=1e-6)


def test_return_std_and_sample_shapes(fitted):
    reg, X, _ = fitted
    mean, std = reg.predict(X[60:], return_std=True)
    assert mean.shape == std.shape == (20,) and np.all(std > 0)
    s = reg.sample(X[60:], n_samples=7)
    assert s.shape == (20, 7)
    np.testing.assert_allclose(reg.sample(X[60:], n_samples=16, random_state=0).mean(1), mean)


def test_sample_determinism(fitted):
    reg, X, _ = fitted
    a = reg.sample(X[60:], n_samples=5, random_state=3)
    np.testing.assert_array_equal(a, reg.sample(X[60:], n_samples=5, random_state=3))
    assert not np.allclose(a, reg.sample(X[60:], n_samples=5, random_state=4))
    np.testing.assert_array_equal(reg.predict(X[60:]), reg.predict(X[60:]))


def test_query_independent_of_other_queries(fitted):
    reg, X, _ = fitted
    full = reg.sample(X[60:], n_samples=4)
    part = reg.sample(X[[75, 61]], n_samples=4)
    np.testing.assert_allclose(part, full[[15, 1]], rtol=1e-12, atol=1e-12)


def test_quantiles_monotone(fitted):
    reg, X, _ = fitted
    q = reg.predict_quantiles(X[60:], quantiles=(0.05, 0.25, 0.5, 0.75, 0.95))
    assert q.shape == (20, 5) and np.all(np.diff(q, axis=1) >= 0)
    median = reg.predict_quantiles(X[60:], quantiles=(0.5,), n_samples=40)[:, 0]
    np.testing.assert_array_equal(median, np.median(reg.sample(X[60:], n_samples=40), axis=1))
    with pytest.raises(ValueError, match="quantiles"):
        reg.predict_quantiles(X[60:], quantiles=(0.5, 1.5))


def test_context_override_predicts_another_task(fitted):
    reg, _, _ = fitted
    X2, y2 = linear_data(d=2, seed=7, scale=50.0, offset=-3.0)
    pred = reg.predict(X2[60:], context=(X2[:60], y2[:60]))
    r2 = 1 - np.mean((pred - y2[60:]) ** 2) / np.var(y2[60:])
    assert r2 > 0.8
    with pytest.raises(ValueError, match="features"):
        reg.predict(X2[60:, :1], context=(X2[:60], y2[:60]))
    with pytest.raises(ValueError):
        reg.predict(X2[60:], context=(X2[:60], y2[:50]))
    with pytest.raises(ValueError, match="pair"):
        reg.predict(X2[60:], context=X2[:60])


def test_large_context_is_split_and_pooled(tiny):
    X, y = linear_data(n=220, seed=2)
    reg = DiffusionICLRegressor(random_state=0, **tiny).fit(X[:200], y[:200])
    assert len(reg._context_subsets(200, np.random.RandomState(0))) == 4  # max_context=64
    assert reg.score(X[200:], y[200:]) > 0.8


def test_the_baseline_is_fitted_once_per_stored_context(monkeypatch):
    """The default model's GP baseline is fitted to the context that ``fit`` stored at the
    first call and reused by the later ones, which sample what the first did; a
    ``context=`` call fits its own; a refit, a copy or a pickle gets the fit of its
    context: its samples are a fresh estimator's."""
    import copy
    import pickle

    from skdiffusion import kernels

    rng = np.random.default_rng(3)
    X = rng.normal(size=(45, 2))
    y = np.sin(2 * X[:, 0]) + X[:, 1]
    calls = []
    fit_gp = kernels.fit_gp
    monkeypatch.setattr(kernels, "fit_gp", lambda *a, **k: calls.append(1) or fit_gp(*a, **k))
    reg = DiffusionICLRegressor(random_state=0, n_samples=8).fit(X[:30], y[:30])
    first = reg.sample(X[40:])
    np.testing.assert_array_equal(reg.sample(X[40:]), first)
    reg.predict(X[40:], return_std=True)
    reg.predict_quantiles(X[40:])
    assert len(calls) == 1
    other = reg.sample(X[40:], context=(X[10:40], y[10:40]))
    assert len(calls) == 2 and np.abs(other - first).max() > 1e-3
    np.testing.assert_array_equal(reg.sample(X[40:]), first)
    assert len(calls) == 2
    reg.fit(X[10:40], y[10:40])
    np.testing.assert_array_equal(reg.sample(X[40:]), other)
    assert len(calls) == 3
    for copied in (pickle.loads(pickle.dumps(reg)), copy.deepcopy(reg)):
        np.testing.assert_array_equal(copied.sample(X[40:]), other)
    assert len(calls) == 5


def test_the_default_model_reads_more_features_than_it_was_trained_on():
    """Friedman 1 with 15 features (10 of them noise) against a model meta-trained on at
    most 10: the shipped default finds the five that matter (R^2 0.89-0.94 over seeds
    0-3); the "linear" model refuses, naming its limit."""
    from sklearn.datasets import make_friedman1

    X, y = make_friedman1(200, 15, noise=1.0, random_state=0)
    reg = DiffusionICLRegressor(random_state=0).fit(X[:150], y[:150])
    assert reg.n_features_in_ == 15 and reg.score(X[150:], y[150:]) > 0.85
    with pytest.raises(ValueError, match="max_features=10. Use model='default'"):
        DiffusionICLRegressor(model="linear").fit(X, y)


def test_input_validation(fitted, tiny):
    reg, X, y = fitted
    bad = X[:10].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        reg.predict(bad)
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        DiffusionICLRegressor(**tiny).fit(bad, y[:10])
    with pytest.raises(ValueError, match="features"):
        reg.predict(X[:, :2])
    with pytest.raises(ValueError, match="max_features=10"):
        DiffusionICLRegressor(**tiny).fit(np.zeros((5, 11)), np.zeros(5))
    with pytest.raises(ValueError, match="n_samples"):
        reg.sample(X[:3], n_samples=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            clone(reg).set_params(device="cuda").fit(X, y).predict(X[:2])
    with pytest.raises(ValueError, match="n_embd"):
        DiffusionICLRegressor(ModelConfig(**{**TINY_MODEL, "n_embd": 30, "n_head": 4})).fit(X, y)


def test_2d_y_warns_and_is_raveled(tiny):
    X, y = linear_data()
    from sklearn.exceptions import DataConversionWarning
    with pytest.warns(DataConversionWarning):
        DiffusionICLRegressor(**tiny).fit(X, y[:, None])
    with pytest.raises(ValueError):
        DiffusionICLRegressor(**tiny).fit(X, np.c_[y, y])


def test_pipeline_cross_val_and_grid_search_train_once(tiny, monkeypatch):
    X, y = linear_data(n=100, seed=3, scale=10.0)
    reg = DiffusionICLRegressor(random_state=0, **tiny)
    reg.fit(X, y)  # warm the cache
    calls = []
    monkeypatch.setattr(pretrained, "pretrain", lambda *a, **k: calls.append(1))
    pipe = Pipeline([("scale", StandardScaler()), ("reg", clone(reg))])
    scores = cross_val_score(pipe, X, y, cv=5)
    assert scores.shape == (5,) and scores.mean() > 0.8
    grid = GridSearchCV(clone(reg), {"n_sampling_steps": [2, 5]}, cv=3).fit(X, y)
    assert grid.best_params_["n_sampling_steps"] in (2, 5)
    assert calls == []  # every fit found the trained denoiser in the cache


def test_disk_cache_is_reused(tiny, monkeypatch):
    X, y = linear_data()
    reg = DiffusionICLRegressor(**tiny).fit(X, y)
    key = pretrained.spec_key(reg.model_spec_)
    monkeypatch.setattr(pretrained, "_MEMORY", {})
    monkeypatch.setattr(pretrained, "pretrain", lambda *a, **k: pytest.fail("retrained"))
    again = DiffusionICLRegressor(**tiny).fit(X, y)
    assert pretrained.spec_key(again.model_spec_) == key


def test_joblib_round_trip_identical(fitted, tmp_path):
    reg, X, _ = fitted
    path = tmp_path / "reg.joblib"
    joblib.dump(reg, path)
    loaded = joblib.load(path)
    np.testing.assert_array_equal(loaded.predict(X[60:]), reg.predict(X[60:]))
    assert loaded.get_params() == reg.get_params()


def test_clone_is_unfitted_with_same_params(fitted):
    reg, _, _ = fitted
    c = clone(reg)
    assert c.get_params() == reg.get_params() and not hasattr(c, "denoiser_")


def test_dataframe_feature_names(tiny):
    import pandas as pd
    X, y = linear_data()
    df = pd.DataFrame(X, columns=["a", "b", "c"])
    reg = DiffusionICLRegressor(random_state=0, **tiny).fit(df, y)
    assert list(reg.feature_names_in_) == ["a", "b", "c"]
    with pytest.warns(UserWarning, match="feature names"):
        plain = reg.predict(X[:5])
    np.testing.assert_allclose(reg.predict(df.iloc[:5]), plain)


@pytest.mark.parametrize("name, architecture", [("default", "head"), ("linear", "set")])
def test_shipped_models_load_trained(monkeypatch, name, architecture):
    """The named models load the packaged weights and never train."""
    monkeypatch.setattr(pretrained, "_MEMORY", {})
    monkeypatch.setattr(pretrained, "pretrain", lambda *a, **k: pytest.fail("would train"))
    X, y = linear_data(n=40, d=4, seed=11)
    key = pretrained.spec_key(DiffusionICLRegressor(name).model_spec())
    assert pretrained.os.path.isdir(pretrained.os.path.join(pretrained.SHIPPED_DIR, key))
    reg = DiffusionICLRegressor(name, random_state=0, n_samples=8).fit(X[:30], y[:30])
    assert pretrained.spec_key(reg.model_spec_) == key     # sampling settings are not in it
    assert reg.model_spec_.get("architecture", "set") == architecture
    assert reg.score(X[30:], y[30:]) > 0.9


@pytest.mark.parametrize("kw, match", [
    (dict(n_embd=30, n_head=4), "divisible"), (dict(prior="cubic"), "unknown prior 'cubic'"),
    (dict(timesteps=5), "timesteps"), (dict(prior={"mixture": 5}), "mixture"),
    (dict(prior={"mixture": [("linear", -1)]}), "positive"),
    (dict(prior=("noisy_linear", {"noise": 1})), "bad settings for prior 'noisy_linear'"),
    (dict(architecture="rnn"), "architecture"), (dict(n_layer=0), "n_layer"),
    (dict(learning_rate="fast"), "learning_rate"), (dict(echo=0), "echo"),
    (dict(ema=1.0), "ema")])
def test_model_spec_validates_before_anything_is_built(kw, match):
    with pytest.raises(ValueError, match=match):
        DiffusionICLRegressor(ModelConfig(**kw)).model_spec()
    with pytest.raises(ValueError, match="model must be"):
        DiffusionICLRegressor("no/such/dir").model_spec()


def test_default_prior_is_a_fresh_copy_per_config():
    """Every ModelConfig gets its own copy of the default prior: changing one config's
    mixture weights changes neither another config nor the shipped model's key."""
    key = pretrained.spec_key(ModelConfig().spec())
    changed = ModelConfig()
    changed.prior[1]["families"]["linear"] = 0.9
    assert ModelConfig().prior == config.DEFAULT_PRIOR
    assert pretrained.spec_key(ModelConfig().spec()) == key
    assert pretrained.spec_key(changed.spec()) != key


@pytest.mark.parametrize("param, value", [("variance_cap", 50.0), ("centred_dof", True)])
def test_baseline_settings_reach_the_denoiser(monkeypatch, param, value):
    """Each linear-baseline setting is part of the configuration (and so of the cache key)
    and of the model; at its default it stays out of the configuration, so the shipped
    model's key is unchanged."""
    monkeypatch.setattr(pretrained, "pretrain", lambda spec, *a, **k: pretrained.build(spec))
    monkeypatch.setattr(pretrained, "seconds_per_step", lambda spec: 1.0)  # full-size model
    X, y = linear_data(n=20, d=2)
    changed = DiffusionICLRegressor(ModelConfig(**{param: value}), n_samples=2,
                                    allow_training=True).fit(X, y)
    assert changed.model_spec_[param] == value and getattr(changed.denoiser_, param) == value
    default = DiffusionICLRegressor().fit(X, y)
    assert param not in default.model_spec_
    assert getattr(default.denoiser_, param) == getattr(ModelConfig(), param)
    assert pretrained.spec_key(changed.model_spec_) != pretrained.spec_key(default.model_spec_)


def test_sampler_settings_cap_steps_at_the_models_timesteps(fitted):
    reg, _, _ = fitted  # TINY: DDIM, 5 sampling steps of a 20-step model
    assert reg.sampler_settings() == dict(sampler="ddim", n_steps=5, eta=0.0, antithetic=True)
    reg.set_params(n_sampling_steps=80, model=ModelConfig(**{**TINY_MODEL, "timesteps": 30}))
    assert reg.sampler_settings()["n_steps"] == 20  # the fitted model's timesteps
    assert clone(reg).sampler_settings()["n_steps"] == 30  # before fit: the parameter's
    assert reg.sampler_settings(timesteps=100)["n_steps"] == 80


def test_antithetic_sampling_cuts_monte_carlo_error(tiny):
    """Antithetic noise pairs cancel the part of each sample that is linear in the noise,
    so predictions vary much less across random states than with independent noise."""
    X, y = linear_data()
    spread = {}
    for antithetic in (False, True):
        preds = [DiffusionICLRegressor(random_state=r, **{**tiny, "antithetic": antithetic})
                 .fit(X[:60], y[:60]).predict(X[60:]) for r in range(6)]
        spread[antithetic] = np.std(preds, axis=0).mean()
    assert spread[True] < 0.5 * spread[False]


def test_cache_miss_never_trains_silently(monkeypatch):
    """Without the opt-in, a configuration with no trained model times a few steps and
    raises an error with the estimate and the command that trains it; nothing trains."""
    monkeypatch.delenv(pretrained.TRAINING_ENV, raising=False)
    monkeypatch.setattr(pretrained, "pretrain", lambda *a, **k: pytest.fail("would train"))
    X, y = linear_data(n=20, d=2)
    config = ModelConfig(**{**TINY_MODEL, "n_layer": 1, "n_train_steps": 5000})
    with pytest.raises(ValueError, match=r"(?s)about [\d.]+ (s|min|h) here \(5000 steps.*"
                                         r"skdiffusion pretrain --config .*\"n_layer\": 1.*"
                                         r"allow_training=True"):
        DiffusionICLRegressor(config).fit(X, y)
    # a grid search over sampling parameters of a trained model trains nothing either
    reg = DiffusionICLRegressor(random_state=0).fit(X, y)
    GridSearchCV(reg, {"n_samples": [2, 4]}, cv=2).fit(X, y)


def test_opted_in_training_checkpoints_and_resumes(tmp_path, monkeypatch):
    """With allow_training the configuration trains inside fit with a progress bar and
    checkpoints; an interrupted run resumes where it stopped."""
    monkeypatch.setenv("SKDIFFUSION_CACHE", str(tmp_path))
    monkeypatch.setattr(pretrained, "CHECKPOINT_SECONDS", 0)  # checkpoint every step
    config = ModelConfig(max_features=2, max_context=8, n_layer=1, n_embd=8, n_head=2,
                         timesteps=10, n_train_steps=6, batch_size=4, echo=1, ema=0.0)
    key = pretrained.spec_key(config.spec())
    X, y = linear_data(n=20, d=2)
    real_train = pretrained.train

    def stop_at_3(step, model):
        if step >= 3:
            raise KeyboardInterrupt

    def interrupted(*a, **k):  # the real run (not the timing probe) is stopped at step 3
        return real_train(*a, **{**k, "callback": stop_at_3 if k.get("checkpoint_path") else None})

    monkeypatch.setattr(pretrained, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        DiffusionICLRegressor(config, allow_training=True).fit(X, y)
    assert pretrained.training_state_step(str(tmp_path / key / "train_state.pt")) == 3
    monkeypatch.setattr(pretrained, "train", real_train)
    reg = DiffusionICLRegressor(config, allow_training=True, n_samples=2).fit(X, y)
    assert reg.predict(X[:3]).shape == (3,) and (tmp_path / key / "model.safetensors").exists()


def test_model_directory_and_old_pickles(tmp_path, fitted):
    """A trained-model directory is a model; an estimator pickled with the earlier
    signature (model settings as parameters) loads as model=ModelConfig(...)."""
    reg, X, y = fitted
    from skdiffusion.checkpoint import save_model
    save_model(str(tmp_path / "m"), reg.denoiser_, reg.model_spec_)
    by_dir = DiffusionICLRegressor(str(tmp_path / "m"), **{k: v for k, v in reg.get_params(False).items()
                                                           if k != "model"}).fit(X[:60], y[:60])
    np.testing.assert_array_equal(by_dir.predict(X[60:]), reg.predict(X[60:]))
    state = reg.__getstate__()
    del state["model"], state["allow_training"]
    state.update({k: v for k, v in TINY_MODEL.items()  # as the earlier signature stored them
                  if k not in ("architecture", "baseline")})  # (which it did not have)
    old = DiffusionICLRegressor.__new__(DiffusionICLRegressor)
    old.__setstate__(state)
    assert old.get_params()["model"] == ModelConfig(**TINY_MODEL)
    np.testing.assert_array_equal(old.predict(X[60:]), reg.predict(X[60:]))
    # one that had the earlier default settings now names that model
    state = DiffusionICLRegressor().__getstate__()
    del state["model"], state["allow_training"]
    state.update(prior=("noisy_linear", {"noise_range": (0.01, 5.0)}), n_train_steps=5500,
                 batch_size=512)
    old = DiffusionICLRegressor.__new__(DiffusionICLRegressor)
    old.__setstate__(state)
    assert old.get_params()["model"] == "linear"


def test_shared_weights_cannot_be_changed_through_one_estimator(fitted):
    reg, X, y = fitted
    before = reg.predict(X[60:])
    with torch.no_grad():
        for p in reg.denoiser_.parameters():
            p.zero_()
    other = clone(reg).fit(X[:60], y[:60])
    np.testing.assert_array_equal(other.predict(X[60:]), before)
    import pickle
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(other)).predict(X[60:]), before)


def test_narrow_predictives_keep_their_width_through_the_chain():
    """A near-noiseless context (y = x1 + x2 + 0.02 e, 100 rows): the GP baseline's std is
    0.014 standardized units, below the chain's last noise level (0.042). The samples' std
    matches the baseline's (median ratio 1.07; it was 0.56 when the last step added no
    noise)."""
    from skdiffusion import inference

    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 2))
    y = X.sum(1) + 0.02 * rng.standard_normal(120)
    reg = DiffusionICLRegressor(random_state=0, n_samples=200).fit(X[:100], y[:100])
    sd = reg.sample(X[100:]).std(1)
    x_q, x_c, y_c, ys = reg._scaled_context(X[100:], None)
    _, v, _ = inference.baseline_predictive(reg.denoiser_, *(torch.from_numpy(a)[None]
                                                         for a in (x_c, y_c, x_q)))
    assert 0.85 < np.median(sd / (v[0].sqrt().numpy() * ys.scale_[0])) < 1.25


def test_gross_outliers_in_y_do_not_pull_the_prediction(monkeypatch):
    """Four points of sixty shifted by 5 (the context's sd is about 1.7): the prior's
    member's Student-t draws take the weight and the prediction stays near the function,
    where with Gaussian noise alone it follows the outliers."""
    from skdiffusion import kernels

    rng = np.random.default_rng(0)
    X, Xq = rng.normal(size=(60, 2)), rng.normal(size=(200, 2))
    f = lambda X: np.sin(2 * X[:, 0]) + X[:, 1]  # noqa: E731
    y = f(X) + 0.1 * rng.standard_t(2, size=60)
    y[::15] += 5
    errors = {}
    for share in (0.0, kernels.PRIOR_STUDENT):
        monkeypatch.setattr(kernels, "PRIOR_STUDENT", share)
        pred = DiffusionICLRegressor(random_state=0).fit(X, y).predict(Xq)
        errors[share] = np.mean((pred - f(Xq)) ** 2)
    assert errors[kernels.PRIOR_STUDENT] < 0.2 * errors[0.0]
    assert errors[kernels.PRIOR_STUDENT] < 0.1
