"""Benchmarks on synthetic task families: in-context curves, robustness, calibration and
sampler settings. Each function returns a list of flat rows (dicts)."""

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import BayesianRidge
from tqdm.auto import tqdm

from .baselines import GP, baselines_for, gaussian_process, predict_baselines
from .metrics import (RELIABILITY_LEVELS, bootstrap_band, mc_corrected_sq_error,
                      probabilistic_scores, reliability)
from .tasks import make_tasks, y_variance

MODEL = "skdiffusion"


def _seed(*parts):
    return int(sum(p * 1000**i for i, p in enumerate(reversed(parts))))


def _error_rows(tasks, model, sizes, seed, baselines, normalizer, reuse=(), **key):
    """Normalized squared error (and its bootstrap band) of the model, exact Bayes where
    available, and ``baselines`` on one set of tasks; rows in ``reuse`` (from an earlier
    report on the same tasks) replace the baselines' and Bayes' computation."""
    samples, _ = model.sample(tasks, sizes.samples, seed)
    y = tasks.y_q[:, 0]
    errors = {MODEL: mc_corrected_sq_error(samples, y)}
    reused = [r for r in reuse if r["method"] != MODEL]
    if {r["method"] for r in reused} >= set(baselines):
        return _rows(errors, normalizer, seed, key) + reused
    if tasks.noise is not None:
        errors["Bayes"] = (tasks.bayes()[0][:, 0] - y) ** 2
    errors.update({name: (p - y) ** 2 for name, p in predict_baselines(baselines, tasks).items()})
    return _rows(errors, normalizer, seed, key)


def _rows(errors, normalizer, seed, key):
    rows = []
    for method, e in errors.items():
        lo, hi = bootstrap_band(e / normalizer, seed=seed)
        rows.append({**key, "method": method, "nse": float(np.mean(e) / normalizer),
                     "lo": float(lo), "hi": float(hi)})
    return rows


def curves(model, sizes, families, progress=False, reuse=()):
    """Error against context size k for each family and d (Garg et al., Figure 2).

    ``reuse``: curve rows of an earlier report with the same sizes; their baselines
    (which do not depend on the model, and take most of the time) are not refitted."""
    points = [(fi, family, d, k) for fi, family in enumerate(families)
              for d in sizes.ds for k in sizes.ks(d)]
    rows, var = [], {}
    for fi, family, d, k in tqdm(points, desc="curves", disable=not progress):
        if (family, d) not in var:
            var[family, d] = y_variance(family, d)
        tasks = make_tasks(family, sizes.tasks, k, d, _seed(fi, d, k))
        old = [r for r in reuse if (r["family"], r["d"], r["k"]) == (family, d, k)]
        rows += _error_rows(tasks, model, sizes, _seed(fi, d, k), baselines_for(family),
                            var[family, d], old, family=family, d=d, k=k)
    return rows


def robustness(model, sizes, variants, d=5, progress=False):
    """The linear curve for prompts unlike training (see ``tasks.VARIANTS``)."""
    points = [(vi, variant, k) for vi, variant in enumerate(variants) for k in sizes.ks(d)]
    rows, var = [], {}
    for vi, variant, k in tqdm(points, desc="robustness", disable=not progress):
        dd = 2 * d if "irrelevant" in variant else d
        if variant not in var:
            var[variant] = float(np.var(make_tasks("linear", 20000, 0, dd, 12345, variant).y_q))
        tasks = make_tasks("linear", sizes.robust_tasks, k, dd, _seed(vi, 7, k), variant)
        rows += _error_rows(tasks, model, sizes, _seed(vi, 7, k),
                            ("least squares", "BayesianRidge"), var[variant], variant=variant, k=k)
    return rows


def _fit_predict_std(make, tasks):
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for Xc, yc, Xq in zip(tasks.X_ctx, tasks.y_ctx, tasks.X_q):
            m, s = make(Xc.shape[1]).fit(Xc, yc).predict(Xq, return_std=True)
            out.append((m[0], s[0]))
    out = np.array(out)
    return out[:, 0], out[:, 1]


def calibration(model, sizes, d=5):
    """Probabilistic scores of every probabilistic method on linear tasks, per k and
    pooled, plus reliability curves (pooled)."""
    pooled, rows = {}, []
    for k in sizes.calibration_ks:
        tasks = make_tasks("linear", sizes.calibration_tasks, k, d, _seed(9, d, k))
        y = tasks.y_q[:, 0]
        samples, _ = model.sample(tasks, sizes.calibration_samples, _seed(9, d, k))
        bm, bs = tasks.bayes()
        preds = {MODEL: (samples.mean(1), samples.std(1, ddof=1), samples),
                 "Bayes": (bm[:, 0], bs[:, 0], None),
                 "BayesianRidge": (*_fit_predict_std(lambda d: BayesianRidge(), tasks), None),
                 GP: (*_fit_predict_std(gaussian_process, tasks), None)}
        for method, (m, s, smp) in preds.items():
            rows.append({"k": k, "method": method, **probabilistic_scores(y, m, s, smp)})
            pm = pooled.setdefault(method, [[], [], [], []])
            for lst, v in zip(pm, (y, m, s, smp)):
                lst.append(v)
    for method, (y, m, s, smp) in pooled.items():
        y, m, s = (np.concatenate(a) for a in (y, m, s))
        smp = None if smp[0] is None else np.concatenate(smp)
        rows.append({"k": "all", "method": method, **probabilistic_scores(y, m, s, smp),
                     "reliability": reliability(y, m, s),
                     "levels": list(RELIABILITY_LEVELS)})
    return rows


def samplers(model, sizes, d=5, k=10):
    """Quality and wall time against the sampler, its steps, n_samples and antithetic
    noise (the sample counts at the model's default number of DDPM steps)."""
    T, default_steps = model.schedule.timesteps, model.sampler_kw["n_steps"]
    tasks = make_tasks("linear", sizes.sampler_tasks, k, d, _seed(8, d, k))
    y, var = tasks.y_q[:, 0], y_variance("linear", d)
    settings = [("ddim", "DDIM", s, sizes.samples, False) for s in sizes.ddim_steps if s <= T]
    settings += [("ddpm", "DDPM", s, sizes.samples, False) for s in sizes.ddpm_steps if s <= T]
    settings += [("ddpm", f"DDPM-{default_steps}" + (", antithetic" if a else ""), default_steps,
                  n, a) for a in (False, True) for n in sizes.sample_counts]
    rows = []
    for sampler, series, steps, n, antithetic in settings:
        samples, sec = model.sample(tasks, n, _seed(8, steps, n), sampler=sampler, n_steps=steps,
                                    antithetic=antithetic)
        scores = probabilistic_scores(y, samples.mean(1), samples.std(1, ddof=1), samples)
        nse = float(np.mean(mc_corrected_sq_error(samples, y)) / var)
        if antithetic:  # both estimators assume independent samples
            nse, scores["crps"] = float("nan"), float("nan")
        rows.append({"series": series, "sampler": sampler, "steps": steps, "n_samples": n,
                     "antithetic": antithetic, "nse": nse,
                     "nse_raw": scores["mse"] / var, "crps": scores["crps"],
                     "cov90": scores["cov90"],
                     "ms_per_query": 1000 * sec / len(tasks)})
    return rows
