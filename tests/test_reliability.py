"""Nothing silent: any real dtype, extreme magnitudes, far queries, constant targets,
and a property-based fuzz suite through the public API (the tiny test model)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.linear_model import BayesianRidge

from skdiffusion import DiffusionICLRegressor

from .conftest import TINY


def linear(n=50, d=3, seed=0, noise=0.0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    return X, X @ rng.standard_normal(d) + noise * rng.standard_normal(n)


@pytest.fixture(scope="module")
def reg():
    X, y = linear()
    return DiffusionICLRegressor(random_state=0, **TINY).fit(X, y), X, y


@pytest.mark.parametrize("dtype", ["float16", "float32", "int64", "bool"])
def test_any_real_dtype_in_fit_predict_and_context(reg, dtype):
    import pandas as pd
    est, X, y = reg
    y_cast = (y > 0) if dtype == "bool" else (10 * y).astype(dtype)
    expected = est.predict(X[:5], context=(X, y_cast.astype("float64")))
    for fitted in (DiffusionICLRegressor(random_state=0, **TINY).fit(X.astype(dtype), y_cast),
                   DiffusionICLRegressor(random_state=0, **TINY).fit(X, pd.Series(y_cast))):
        got = fitted.predict(X[:5].astype(dtype) if dtype != "bool" else X[:5])
        assert got.dtype == np.float64 and np.all(np.isfinite(got))
    np.testing.assert_allclose(
        est.predict(X[:5], context=(X, y_cast)), expected, rtol=1e-12)


@pytest.mark.parametrize("scale", [2.0**1000, 2.0**515, 2.0**-512, 2.0**-1000, 1e300, 1e-300])
def test_extreme_magnitudes_are_exact(reg, scale):
    """Standardizing through a power of two per column neither overflows nor underflows:
    the predictions are the unit-scale ones times the scale, exactly for a power-of-two
    scale (1e300 rounds the inputs, which reseeds each query's noise: Monte Carlo error)."""
    est, X, y = reg
    base = est.predict(X[:4])
    with np.errstate(all="raise"):
        big = DiffusionICLRegressor(random_state=0, **TINY).fit(X * scale, y * scale)
        exact = np.frexp(scale)[0] == 0.5
        np.testing.assert_allclose(big.predict(X[:4] * scale) / scale, base,
                                   rtol=1e-12 if exact else 1e-3)
    assert np.isfinite(big.y_scaler_.scale_).all() and np.isfinite(big.x_scaler_.scale_).all()


def test_absurdly_far_or_overflowing_queries_are_clear_errors(reg):
    est, X, y = reg
    with pytest.raises(ValueError, match="context standard deviations"):
        est.predict(np.array([[1e155, 0.0, 0.0]]))
    huge = DiffusionICLRegressor(random_state=0, **TINY).fit(X, y * 1e307)
    with pytest.raises(ValueError, match="overflow"):
        huge.predict(X[:3] * 1e5)


def test_constant_target_predicts_the_constant_on_its_scale(reg):
    est, X, _ = reg
    c = DiffusionICLRegressor(random_state=0, **TINY).fit(X[:30], np.full(30, 1e-9))
    mean, std = c.predict(X[30:40], return_std=True)
    np.testing.assert_allclose(mean, 1e-9, rtol=0.02)
    assert np.all(std < 1e-10)


def test_far_queries_cover_at_least_as_often_as_bayesian_ridge():
    """Noiseless linear tasks, 50 context points, 3 features; queries at |x| = 30 and 100
    context standard deviations: the 90 % interval (of the shipped model) covers the
    truth at least as often as BayesianRidge's mean +- 1.645 std."""
    ours, theirs = [], []
    for seed in range(10):
        X, y = linear(seed=seed)
        rng = np.random.default_rng(100 + seed)
        directions = rng.standard_normal((4, 3))
        Xq = np.concatenate([r * directions / np.abs(directions).max(1, keepdims=True)
                             for r in (30, 100)])
        truth = Xq @ np.linalg.lstsq(X, y, rcond=None)[0]
        reg = DiffusionICLRegressor(random_state=seed).fit(X, y)
        lo, hi = reg.predict_quantiles(Xq, (0.05, 0.95), n_samples=200).T
        ours += list((lo <= truth) & (truth <= hi))
        m, s = BayesianRidge().fit(X, y).predict(Xq, return_std=True)
        theirs += list(np.abs(m - truth) <= 1.645 * s)
    assert np.mean(ours) >= np.mean(theirs) and np.mean(ours) >= 0.8


# ------------------------------------------------------------------- fuzz suite
FEATURES = TINY["model"].max_features
MAX_CONTEXT = TINY["model"].max_context


def arrays(draw, n, d):
    """An (n, d) array of any dtype and magnitude, with NaN / inf sometimes placed."""
    dtype = draw(st.sampled_from(["float16", "float32", "float64", "int32", "bool", "object"]))
    exponent = draw(st.integers(-300, 300))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    A = rng.standard_normal((n, d)) * 10.0 ** exponent
    if dtype == "bool":
        A = A > 0
    elif dtype == "int32":
        A = np.clip(np.round(A), -2**31, 2**31 - 1).astype("int32")
    elif dtype == "float16" or dtype == "float32":
        with np.errstate(over="ignore"):
            A = A.astype(dtype)
    elif dtype == "object":
        A = A.astype(object)
    if draw(st.booleans()) and draw(st.booleans()) and dtype in ("float32", "float64", "object"):
        A[rng.integers(n), rng.integers(d)] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return A


@st.composite
def problems(draw):
    d = draw(st.integers(1, FEATURES + 1))
    n = draw(st.sampled_from([1, 2, 3, 7, MAX_CONTEXT - 1, MAX_CONTEXT, MAX_CONTEXT + 1, 200]))
    X, Xq = arrays(draw, n, d), arrays(draw, draw(st.integers(1, 70)), d)
    y = arrays(draw, n, 1)[:, 0]
    return X, y, Xq, draw(st.booleans())


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(problems())
def test_fuzz_any_input_gives_finite_output_or_a_clear_error(problem):
    X, y, Xq, via_context = problem
    reg = DiffusionICLRegressor(random_state=0, **{**TINY, "n_samples": 4})
    try:
        if via_context:
            reg.fit(np.zeros((2, X.shape[1])), np.zeros(2))
            mean, std = reg.predict(Xq, context=(X, y), return_std=True)
        else:
            mean, std = reg.fit(X, y).predict(Xq, return_std=True)
    except (ValueError, TypeError) as e:
        message = str(e).lower()
        assert any(word in message for word in (
            "nan", "infinity", "features", "sample", "overflow", "context", "dtype",
            "float", "convert", "string", "complex", "must be")), message
        return
    assert mean.shape == std.shape == (len(Xq),)
    assert np.isfinite(mean).all() and np.isfinite(std).all()
