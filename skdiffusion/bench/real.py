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
from .baselines import GP, gaussian_process
from .metrics import probabilistic_scores


def _linnerud(target, n=None):
    data = load_linnerud()
    return data.data, data.target[:, target]


def _diabetes(n=None):
    """The diabetes data, or ``n`` of its 442 rows drawn without replacement (seed 0)."""
    X, y = load_diabetes(return_X_y=True)
    if n is None or n >= len(y):
        return X, y
    rows = np.random.default_rng(0).choice(len(y), n, replace=False)
    return X[rows], y[rows]


def _friedman(make, noise):
    return lambda n=None: make(n_samples=n or 200, noise=noise, random_state=0)


# Friedman noise levels give roughly the 3:1 signal-to-noise ratio of Friedman (1991).
# Each loader takes the number of rows (None: its default size, 200 for Friedman).
DATASETS = {
    "diabetes": _diabetes,
    "friedman1": _friedman(make_friedman1, 1.0),
    "friedman2": _friedman(make_friedman2, 110.0),
    "friedman3": _friedman(make_friedman3, 0.1),
    **{f"linnerud {name}": partial(_linnerud, j) for j, name in enumerate(("Weight", "Waist", "Pulse"))},
}
SIZED = ("diabetes", "friedman1", "friedman2", "friedman3")  # the size sweep's data sets


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


def _ngboost(X, y, Xt):
    from ngboost import NGBRegressor  # the bench extra
    dist = NGBRegressor(verbose=False, random_state=0).fit(X, y).pred_dist(Xt)
    return dist.loc, dist.scale, None


def methods(params):
    return {"skdiffusion": _skdiffusion(params),
            "BayesianRidge": _with_std(lambda d: make_pipeline(StandardScaler(), BayesianRidge())),
            GP: _with_std(_gp),
            "random forest": _forest,
            "NGBoost": _ngboost,
            "5-NN": _knn}


def score(y, m, s, smp):
    """Point and probabilistic scores of one fold or task; a method without a predictive
    distribution (k-NN) gets CRPS = absolute error (that of a point forecast)."""
    sc = {"r2": r2_score(y, m), "rmse": float(np.sqrt(np.mean((y - m) ** 2)))}
    if s is None:
        sc.update(crps=float(np.mean(np.abs(y - m))), nll=np.nan, cov90=np.nan)
    else:
        p = probabilistic_scores(y, m, s, smp)
        sc.update(crps=p["crps"], nll=p["nll"], cov90=p["cov90"])
    return sc


def fit_predict_quietly(fit_predict, X, y, Xt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fit_predict(X, y, Xt)


def cross_validate(params, datasets, n_splits=5, sizes=(None,), reuse=()):
    """Rows {dataset, n, d, method, r2, r2_std, rmse, crps, nll, cov90, seconds}: means
    over the folds, for each data set at each of ``sizes`` rows (None: its default size;
    only the :data:`SIZED` data sets are resized, each size once). ``reuse``: rows of an
    earlier call whose methods other than skdiffusion are taken over instead of refitted."""
    rows = []
    old = {(r["dataset"], r["n"], r["method"]): r for r in reuse if r["method"] != "skdiffusion"}
    for name in datasets:
        loads = {}
        for n in (sizes if name in SIZED else (None,)):
            X, y = DATASETS[name](n)
            loads.setdefault(len(y), (X, y))
        for X, y in loads.values():
            folds = list(KFold(n_splits, shuffle=True, random_state=0).split(X))
            for method, fit_predict in methods(params).items():
                if (name, len(y), method) in old:
                    rows.append(old[name, len(y), method])
                    continue
                scores, t0 = [], time.perf_counter()
                for train, test in folds:
                    m, s, smp = fit_predict_quietly(fit_predict, X[train], y[train], X[test])
                    scores.append(score(y[test], m, s, smp))
                row = {"dataset": name, "n": len(y), "d": X.shape[1], "method": method,
                       "seconds": time.perf_counter() - t0}
                row.update({key: float(np.mean([sc[key] for sc in scores])) for key in scores[0]})
                row["r2_std"] = float(np.std([sc["r2"] for sc in scores]))
                rows.append(row)
    return rows
