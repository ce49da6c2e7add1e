"""scikit-learn's full estimator check suite, nothing skipped or expected to fail: on the
tiny test configuration of each architecture and baseline (the head ones sampling in
float32) and on the default constructor (the shipped model, no training; most of the
suite's time, in the checks that predict a few hundred rows with the full default chain)."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from skdiffusion import DiffusionICLRegressor

from .conftest import TINY, TINY_HEAD, TINY_HEAD_GP


@parametrize_with_checks([DiffusionICLRegressor(random_state=0, **TINY),
                          DiffusionICLRegressor(random_state=0, **TINY_HEAD),
                          DiffusionICLRegressor(random_state=0, **TINY_HEAD_GP),
                          DiffusionICLRegressor()])
def test_sklearn_compatible(estimator, check):
    check(estimator)
