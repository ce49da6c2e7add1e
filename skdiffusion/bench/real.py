"""Cross-validated accuracy and calibration on real and classic regression datasets that
scikit-learn ships or generates offline."""

import time
import warnings
from functools import partial

import numpy as np
from sklearn.datasets import load_diabetes, load_linnerud, make_friedman1, make_friedman2, make_friedman3
from sklearn.ensemble import RandomForestRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import BayesianRidge
from sklearn.metrics import r2_score
from sklearn.model_selection import KFold
from sklearn.neighbors import KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..estimator import DiffusionICLRegressor
from .baselines import gaussian_process
from .metrics import probabilistic_scores


def _linnerud(target):
    data = load_linnerud()
    return data.data, data.target[:, target]


# Friedman noise levels give roughly the 3:1 signal-to-noise ratio of Friedman (1991).
DATASETS = {
    "diabetes": lambda: load_diabetes(return_X_y=True),
    "friedman1": lambda: make_friedman1(n_samples=200, noise=1.0, random_state=0),
    "friedman2": lambda: make_friedman2(n_samples=200, noise=110.0, random_state=0),
    "friedman3": lambda: make_friedman3(n_samples=200, noise=0.1, random_state=0),
    **{f"linnerud {name}": partial(_linnerud, j) for j, name in enumerate(("Weight", "Waist", "Pulse"))},
}


def _skdiffusion(params):
    def fit_predict(X, y, Xt):
        reg = DiffusionICLRegressor(**params, random_state=0).fit(X, y)
        samples = reg.sample(Xt)  # mean and std as users get them (antithetic by default)
        # the fair CRPS estimator assumes independent samples: draw those separately
        iid = reg.set_params(antithetic=False).sample(Xt) if reg.antithetic else samples
        return samples.mean(1), samples.std(1, ddof=1), iid
    return fit_predict


def _with_std(make):
    def fit_predict(X, y, Xt):
        m, s = make(X.shape[1]).fit(X, y).predict(Xt, return_std=True)
        return m, s, None
    return fit_predict


def _forest(X, y, Xt):
    rf = RandomForestRegressor(n_estimators=200, random_state=0).fit(X, y)
    trees = np.stack([t.predict(Xt) for t in rf.estimators_], 1)  # the trees as an ensemble
    return trees.mean(1), trees.std(1, ddof=1), trees


def _knn(X, y, Xt):
    return make_pipeline(StandardScaler(), KNeighborsRegressor(5)).fit(X, y).predict(Xt), None, None


def _gp(d):
    return make_pipeline(StandardScaler(), gaussian_process(d))


def methods(params):
    return {"skdiffusion": _skdiffusion(params),
            "BayesianRidge": _with_std(lambda d: BayesianRidge()),
            "GP (RBF + white)": _with_std(_gp),
            "random forest": _forest,
            "5-NN": _knn}


def cross_validate(params, datasets, n_splits=5):
    """Rows {dataset, method, r2, rmse, crps, cov90, seconds}: means over the folds.

    A method without a predictive distribution (k-NN) gets CRPS = absolute error (the
    CRPS of a point forecast) and no coverage."""
    rows = []
    for name in datasets:
        X, y = DATASETS[name]()
        folds = list(KFold(n_splits, shuffle=True, random_state=0).split(X))
        for method, fit_predict in methods(params).items():
            scores, t0 = [], time.perf_counter()
            for train, test in folds:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    m, s, smp = fit_predict(X[train], y[train], X[test])
                yt = y[test]
                sc = {"r2": r2_score(yt, m), "rmse": float(np.sqrt(np.mean((yt - m) ** 2)))}
                if s is None:
                    sc.update(crps=float(np.mean(np.abs(yt - m))), cov90=np.nan)
                else:
                    p = probabilistic_scores(yt, m, s, smp)
                    sc.update(crps=p["crps"], cov90=p["cov90"])
                scores.append(sc)
            row = {"dataset": name, "n": len(y), "d": X.shape[1], "method": method,
                   "seconds": time.perf_counter() - t0}
            row.update({key: float(np.mean([sc[key] for sc in scores])) for key in scores[0]})
            row["r2_std"] = float(np.std([sc["r2"] for sc in scores]))
            rows.append(row)
    return rows
