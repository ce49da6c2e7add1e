"""Small real regression data sets that statsmodels ships (nothing is downloaded): 16 to
309 rows, 1 to 20 features, counts, skewed and binary columns, curves in time. Each
method is cross-validated (5 folds, the bench's seed) and scored on its pooled
out-of-fold predictions (per-fold R^2 on 3-4 test rows would be noise): R^2, CRPS (from
the method's samples where it has them, else its Gaussian), 90 % coverage; the summary is
the mean R^2 and the geometric mean of CRPS over the ARD GP's. "features alone" is the
baseline that the model's network corrects (the ablation of meta-training: a Gaussian,
or where the prior's bimodal draws fit, a mixture of Gaussians);
"the prior's average" (only on request, ``--methods``: minutes) is Bayes' answer for the
GP draws of the model's prior, by importance sampling over its hyperparameters
(``family_ceiling.py``): about what a network trained to perfection on them would give.

    python benchmarks/small_real.py --out benchmarks/results/small_real.md
    python benchmarks/small_real.py --only sunspots,cancer --methods skdiffusion,"GP (ARD)"
    python benchmarks/small_real.py --reuse benchmarks/results/small_real.json  # the model's rows only
    python benchmarks/small_real.py --reuse benchmarks/results/small_real.json \
        --methods "GP (ARD),features alone,the prior's average"
"""

import argparse
import json
import os
import sys
import time

import numpy as np
from family_ceiling import prior_average
from sklearn.model_selection import KFold

from skdiffusion.bench.metrics import probabilistic_scores
from skdiffusion.bench.predictive import FEATURES_ALONE, MODEL_DEPENDENT, features_alone
from skdiffusion.bench.real import fit_predict_quietly, methods

GP = "GP (ARD)"
PRIOR_AVERAGE = "the prior's average"  # of its GP draws (family_ceiling.py); minutes, not default


def _columns(name, target, features=None, every=1):
    """Rows of statsmodels' data set ``name`` without missing values (every ``every``-th
    row): X from ``features`` (None: every other column), y from ``target``."""
    import statsmodels.datasets  # the bench extra

    df = getattr(statsmodels.datasets, name).load_pandas().data.dropna().iloc[::every]
    X = df[features] if features else df.drop(columns=[target])
    return X.to_numpy(float), df[target].to_numpy(float)


def _co2():
    """Weekly Mauna Loa CO2 (gaps interpolated), every 8th week against the week."""
    import statsmodels.datasets

    y = statsmodels.datasets.co2.load_pandas().data["co2"].interpolate().dropna().to_numpy()[::8]
    return np.arange(len(y), dtype=float)[:, None] * 8, y


def _star98():
    """Share of California school districts' pupils above the national median in maths."""
    import statsmodels.datasets

    df = statsmodels.datasets.star98.load_pandas().data
    return df.iloc[:, 2:].to_numpy(float), (df.NABOVE / (df.NABOVE + df.NBELOW)).to_numpy()


MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV"]
MACRO = ["realgdp", "realcons", "realgovt", "realdpi", "cpi", "m1", "tbilrate", "unemp", "pop",
         "infl", "realint"]
DATASETS = {
    "engel": lambda: _columns("engel", "foodexp", ["income"]),
    "sunspots": lambda: _columns("sunspots", "SUNACTIVITY", ["YEAR"]),
    "nile": lambda: _columns("nile", "volume", ["year"]),
    "strikes": lambda: _columns("strikes", "duration", ["iprod"]),
    "cancer": lambda: _columns("cancer", "cancer", ["population"]),
    "interest": lambda: _columns("interest_inflation", "R", ["Dp"]),
    "co2": _co2,
    "stackloss": lambda: _columns("stackloss", "STACKLOSS"),
    "longley": lambda: _columns("longley", "TOTEMP"),
    "copper": lambda: _columns("copper", "WORLDCONSUMPTION"),
    "ccard": lambda: _columns("ccard", "AVGEXP"),
    "committee": lambda: _columns("committee", "BILLS104"),
    "cpunish": lambda: _columns("cpunish", "EXECUTIONS"),
    "scotland": lambda: _columns("scotland", "YES"),
    "spector": lambda: _columns("spector", "GPA"),
    "statecrime": lambda: _columns("statecrime", "murder",
                                   ["hs_grad", "poverty", "single", "white", "urban"]),
    "danish": lambda: _columns("danish_data", "lrm", ["lry", "lpy", "ibo", "ide"]),
    "elnino": lambda: _columns("elnino", "DEC", MONTHS),
    "grunfeld": lambda: _columns("grunfeld", "invest", ["value", "capital"]),
    "macrodata": lambda: _columns("macrodata", "realinv", MACRO),
    "star98": _star98,
}


def cross_validate(name, method, fit_predict, n_splits=5):
    """One row {dataset, n, d, method, r2, crps, cov90, seconds} from pooled out-of-fold
    predictions."""
    X, y = DATASETS[name]()
    mean, std, draws = np.zeros(len(y)), np.zeros(len(y)), []
    t0 = time.perf_counter()
    for train, test in KFold(n_splits, shuffle=True, random_state=0).split(X):
        m, s, smp = fit_predict_quietly(fit_predict, X[train], y[train], X[test])
        mean[test] = m
        std[test] = np.nan if s is None else s
        draws.append((test, smp))
    seconds = time.perf_counter() - t0
    row = {"dataset": name, "n": len(y), "d": X.shape[1], "method": method, "seconds": seconds,
           "r2": float(1 - np.mean((y - mean) ** 2) / np.var(y))}
    if np.isnan(std).any():  # no predictive distribution: CRPS of a point forecast
        return {**row, "crps": float(np.mean(np.abs(y - mean))), "cov90": float("nan")}
    samples = None
    if all(s is not None for _, s in draws) and len({s.shape[1] for _, s in draws}) == 1:
        samples = np.empty((len(y), draws[0][1].shape[1]))
        for test, s in draws:
            samples[test] = s
    p = probabilistic_scores(y, mean, std, samples)
    return {**row, "crps": p["crps"], "cov90": p["cov90"]}


def summary(rows):
    """{method: (mean R^2, geometric-mean CRPS / GP's)} over the data sets every method has."""
    by = {(r["dataset"], r["method"]): r for r in rows}
    names = list(dict.fromkeys(r["method"] for r in rows))
    sets = [s for s in dict.fromkeys(r["dataset"] for r in rows)
            if all((s, m) in by for m in names)]
    out = {}
    for m in names:
        r2 = np.mean([by[s, m]["r2"] for s in sets])
        crps = (np.exp(np.mean([np.log(by[s, m]["crps"] / by[s, GP]["crps"]) for s in sets]))
                if all((s, GP) in by for s in sets) else float("nan"))
        out[m] = (float(r2), float(crps))
    return out


def markdown(rows, command):
    names = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["dataset"], r["method"]): r for r in rows}
    sets = list(dict.fromkeys(r["dataset"] for r in rows))
    head = "| data | n | d | " + " | ".join(names) + " |"
    lines = [f"`{command}`", "", "R^2 (pooled out-of-fold, 5 folds):", "", head,
             "|" + "---|" * (3 + len(names))]
    for s in sets:
        r0 = next(by[s, m] for m in names if (s, m) in by)
        cells = [f"{by[s, m]['r2']:.3f}" if (s, m) in by else "" for m in names]
        lines.append(f"| {s} | {r0['n']} | {r0['d']} | " + " | ".join(cells) + " |")
    if GP in names:
        lines += ["", "CRPS / the ARD GP's (90 % coverage):", "", head,
                  "|" + "---|" * (3 + len(names))]
        for s in sets:
            r0 = by[s, GP]
            cells = [f"{by[s, m]['crps'] / r0['crps']:.3f} ({by[s, m]['cov90']:.2f})"
                     if (s, m) in by else "" for m in names]
            lines.append(f"| {s} | {r0['n']} | {r0['d']} | " + " | ".join(cells) + " |")
    lines += ["", "| summary | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    summ = summary(rows)
    lines.append("| mean R^2 | " + " | ".join(f"{summ[m][0]:.3f}" for m in names) + " |")
    lines.append("| CRPS / GP (geometric mean) | "
                 + " | ".join(f"{summ[m][1]:.3f}" for m in names) + " |")
    seconds = [sum(r["seconds"] for r in rows if r["method"] == m) for m in names]
    lines.append("| seconds (all folds, all data) | "
                 + " | ".join(f"{t:.0f}" for t in seconds) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="comma-separated data sets (default: all)")
    p.add_argument("--methods", help="comma-separated methods (default: all but 5-NN)")
    p.add_argument("--params", default="{}", help="JSON keyword arguments of DiffusionICLRegressor")
    p.add_argument("--reuse", help="JSON of an earlier run: its rows of the methods that do "
                   "not depend on the model are kept")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--out", help="write the tables here (Markdown) and the rows beside it (.json)")
    args = p.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    sets = args.only.split(",") if args.only else list(DATASETS)
    unknown = set(sets) - set(DATASETS)
    if unknown:
        p.error(f"unknown data sets {sorted(unknown)}; choose from {list(DATASETS)}")
    params = json.loads(args.params)
    available = {**methods(params), FEATURES_ALONE: features_alone(params),
                 PRIOR_AVERAGE: prior_average()}
    names = (args.methods.split(",") if args.methods
             else [m for m in available if m not in ("5-NN", PRIOR_AVERAGE)])
    if set(names) - set(available):
        p.error(f"unknown methods {sorted(set(names) - set(available))}; "
                f"choose from {list(available)}")
    old = {}
    if args.reuse:
        with open(args.reuse) as f:
            old = {(r["dataset"], r["method"]): r for r in json.load(f)
                   if r["method"] not in MODEL_DEPENDENT}
    rows = []
    for s in sets:
        for m in names:
            row = old.get((s, m)) or cross_validate(s, m, available[m])
            rows.append(row)
            print(f"{s:11s} n={row['n']:4d} d={row['d']:2d} {m:14s} R^2 {row['r2']:7.3f} "
                  f"CRPS {row['crps']:.4g} cov {row['cov90']:.2f} ({row['seconds']:.1f} s)",
                  flush=True)
    command = " ".join(["python benchmarks/small_real.py", *(sys.argv[1:] if argv is None else argv)])
    text = markdown(rows, command)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)
        with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
