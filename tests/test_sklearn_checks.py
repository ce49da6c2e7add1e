"""scikit-learn's full estimator check suite, nothing skipped or expected to fail."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from skdiffusion import DiffusionICLRegressor

from .conftest import TINY


@parametrize_with_checks([DiffusionICLRegressor(random_state=0, **TINY)])
def test_sklearn_compatible(estimator, check):
    check(estimator)
