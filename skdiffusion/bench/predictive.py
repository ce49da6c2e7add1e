"""Whole predictive distributions on nonlinear task families: the model against peers
fitted to each task's context (ARD GP, BayesianRidge, random forest, NGBoost) and
against its own closed-form features alone (the ablation).

f is a draw of the ``functions`` prior's GP family (random RBF / Matern-5/2 kernels,
per-feature lengthscales from its Gamma hyperprior, sometimes plus a linear kernel,
irrelevant features), rescaled to unit variance per task; the families differ in the
noise (:func:`skdiffusion.priors.add_noise`) at a scale log-uniform in [0.01, 1]:
Gaussian, heteroscedastic, heavy-tailed (Student t) or bimodal. x ~ N(0, I_d).
"""

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from ..estimator import DiffusionICLRegressor
from ..inference import baseline_predictive
from ..priors import Functions
from .baselines import GP
from .real import fit_predict_quietly, methods, score

NOISE_OF = {"gp": "gaussian", "heteroscedastic": "heteroscedastic",
            "heavy-tailed": "student_t", "bimodal": "bimodal"}
FAMILIES = tuple(NOISE_OF)
FEATURES_ALONE = "features alone"


def make_function_tasks(family, n_tasks, k, d, n_queries, seed, truth=None):
    """(X (n, k + q, d), y (n, k + q)) float64: the first k points of each task are its
    context, the rest its queries. ``truth``: a dict that receives each task's hidden law
    (:meth:`skdiffusion.priors.Functions.sample_y`)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn((n_tasks, k + n_queries, d), generator=g)
    prior = Functions(families={"gp": 1.0}, noise_weights={NOISE_OF[family]: 1.0})
    y = prior.sample_y(X, g, truth)
    return X.double().numpy(), y.double().numpy()


def features_alone(params, n_samples=1000, seed=0):
    """fit_predict of the baseline that the model's network corrects: a Gaussian, or
    where the baseline is a mixture, ``n_samples`` draws of it per query."""
    def fit_predict(X, y, Xt):
        reg = DiffusionICLRegressor(**params).fit(X, y)
        x_q, x_c, y_c, ys = reg._scaled_context(Xt, None)
        m, s2, mixture = baseline_predictive(reg.denoiser_, *(torch.from_numpy(a)[None]
                                                               for a in (x_c, y_c, x_q)))
        mean = ys.inverse_transform(m[0].numpy()[:, None])[:, 0]
        if mixture is None:
            return mean, s2[0].sqrt().numpy() * ys.scale_[0], None
        w, mu, var = mixture[0].numpy().transpose(1, 0, 2)                 # (3, m, C)
        rng = np.random.default_rng(seed)
        u = rng.random((len(w), n_samples, 1))
        comp = (u > np.cumsum(w, -1)[:, None, :-1]).sum(-1)              # (m, n_samples)
        pick = lambda a: np.take_along_axis(a, comp, 1)  # noqa: E731
        draws = pick(mu) + np.sqrt(pick(var)) * rng.standard_normal(comp.shape)
        draws = ys.inverse_transform(draws.reshape(-1, 1)).reshape(draws.shape)
        return mean, draws.std(1), draws
    return fit_predict


def peers(params):
    """The methods of this section, by name (k-NN has no predictive distribution)."""
    out = {name: f for name, f in methods(params).items() if name != "5-NN"}
    return {**out, FEATURES_ALONE: features_alone(params)}


MODEL_DEPENDENT = ("skdiffusion", FEATURES_ALONE)  # the rows a new model must recompute


def compare(params, families=FAMILIES, ds=(1, 3, 5), ks=(10, 30, 100), n_tasks=24,
            n_queries=25, progress=False, only=None, reuse=()):
    """Rows {family, d, k, method, crps, crps_vs_gp [lo, hi], nll, cov90, nse, seconds,
    task_crps}.

    Scores are means over tasks of each task's mean over its queries (task_crps: the
    per-task CRPS); crps_vs_gp is the ratio of the method's mean CRPS to the ARD GP's on
    the same tasks, with a paired percentile-bootstrap 90 % band over tasks; nse is the
    squared error over Var(y). ``only``: the names of the methods to run (the GP always
    runs: it is the reference). ``reuse``: rows of an earlier call with the same sizes
    whose methods (except :data:`MODEL_DEPENDENT`) are taken over instead of refitted."""
    fns = {name: f for name, f in peers(params).items()
           if only is None or name in only or name == GP}
    # each family's tasks are seeded by its place in FAMILIES, whichever families are asked
    cells = [(FAMILIES.index(f), f, d, k) for f in families for d in ds for k in ks]
    rows = []
    for fi, family, d, k in tqdm(cells, desc="predictive", disable=not progress):
        X, y = make_function_tasks(family, n_tasks, k, d, n_queries, 7919 * fi + 31 * d + k)
        var = float(np.var(y))
        old = {r["method"]: r for r in reuse if (r["family"], r["d"], r["k"]) == (family, d, k)
               and r["method"] not in MODEL_DEPENDENT}
        stats = {}
        for name, fit_predict in fns.items():
            if name in old:
                stats[name] = old[name]
                continue
            t0, scores = time.perf_counter(), []
            for Xi, yi in zip(X, y):
                pred = fit_predict_quietly(fit_predict, Xi[:k], yi[:k], Xi[k:])
                scores.append(score(yi[k:], *pred))
            stats[name] = {"nse": float(np.mean([sc["rmse"] ** 2 for sc in scores]) / var),
                           "seconds": (time.perf_counter() - t0) / n_tasks,
                           "task_crps": [sc["crps"] for sc in scores],
                           **{key: float(np.mean([sc[key] for sc in scores]))
                              for key in ("crps", "nll", "cov90")}}
        gp_crps = np.array(stats[GP]["task_crps"])
        idx = np.random.default_rng(fi * 100 + k).integers(0, n_tasks, (1000, n_tasks))
        for name, st in stats.items():
            crps = np.array(st["task_crps"])
            ratios = crps[idx].mean(1) / gp_crps[idx].mean(1)
            rows.append({"family": family, "d": d, "k": k, "method": name,
                         "crps_vs_gp": float(crps.mean() / gp_crps.mean()),
                         "lo": float(np.quantile(ratios, 0.05)),
                         "hi": float(np.quantile(ratios, 0.95)),
                         **{key: st[key] for key in ("crps", "nll", "cov90", "nse", "seconds",
                                                     "task_crps")}})
    return rows
