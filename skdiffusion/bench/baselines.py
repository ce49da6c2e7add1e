"""Per-task baselines fitted on each task's own context (no meta-learning)."""

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
from sklearn.linear_model import BayesianRidge
from sklearn.neighbors import KNeighborsRegressor
from sklearn.neural_network import MLPRegressor
from sklearn.tree import DecisionTreeRegressor

from ..evaluation import least_squares


def _averaging(Xc, yc, Xq):
    """w_hat = mean of y_i x_i (Garg et al.'s averaging estimator)."""
    return Xq @ (Xc * yc[:, None]).mean(0)


def _sklearn(make):
    def predict(Xc, yc, Xq):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return make(len(yc)).fit(Xc, yc).predict(Xq)
    return predict


BASELINES = {
    "least squares": least_squares,
    "BayesianRidge": _sklearn(lambda k: BayesianRidge()),
    "3-NN": _sklearn(lambda k: KNeighborsRegressor(n_neighbors=min(3, k))),
    "averaging": _averaging,
    "decision tree": _sklearn(lambda k: DecisionTreeRegressor(random_state=0)),
    "MLP": _sklearn(lambda k: MLPRegressor(hidden_layer_sizes=(100,), solver="lbfgs",
                                           max_iter=300, random_state=0)),
}
COMMON = ("least squares", "BayesianRidge", "3-NN", "averaging")
FAMILY_EXTRA = {"decision_tree": ("decision tree",), "relu_net": ("MLP",)}


GP = "GP (ARD)"  # the reference peer: per-feature lengthscales, type-II ML, restarts
GP_RESTARTS = 3


def gaussian_process(d, restarts=GP_RESTARTS):
    """GP with an ARD RBF kernel (one lengthscale per feature) plus white noise,
    hyperparameters by type-II maximum likelihood from the default start and
    ``restarts`` random ones (seeded)."""
    kernel = ConstantKernel() * RBF(np.ones(d)) + WhiteKernel()
    return GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=restarts,
                                    random_state=0)


def baselines_for(family):
    """Names of the baselines reported for ``family``."""
    return COMMON + FAMILY_EXTRA.get(family, ())


def predict_baselines(names, tasks):
    """{name: (n,) predictions at each task's query}; 0 (the prior mean) with no context."""
    out = {}
    for name in names:
        fn = BASELINES[name]
        out[name] = np.array([fn(Xc, yc, Xq)[0] if len(yc) else 0.0
                              for Xc, yc, Xq in zip(tasks.X_ctx, tasks.y_ctx, tasks.X_q)])
    return out
