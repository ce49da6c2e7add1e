"""Quality against cost of the default model's sampling settings (reverse-chain steps S
and samples per query n): what the default ``n_sampling_steps`` / ``n_samples`` buy.

For each (S, n) with the DDPM sampler: linear-Gaussian tasks (noise std 0.1, the
acceptance grid's hardest cells) give MSE / Bayes and 90 % coverage; noisy linear tasks
(noise std 1) the same; ``load_diabetes`` gives 5-fold R^2 and held-out 90 % coverage
through the estimator, and the time of one ``predict`` of all 442 rows with the full
data as context (the issue's speed bar).

    python benchmarks/sampling_budget.py                 # about 15 minutes here
    python benchmarks/sampling_budget.py --settings 50x64 20x32
"""

import argparse
import os
import sys
import time

import numpy as np
from scipy.stats import norm
from sklearn.datasets import load_diabetes
from sklearn.model_selection import KFold

from skdiffusion.estimator import DiffusionICLRegressor
from skdiffusion.evaluation import icl_linear_table
from skdiffusion.pretrained import get_denoiser

HERE = os.path.dirname(os.path.abspath(__file__))
CELLS = [(0.1, 2, [4, 20]), (0.1, 5, [3, 7, 10, 20, 40]), (0.1, 10, [12, 40]), (1.0, 5, [7, 20])]


def synthetic(model, schedule, ptype, steps, n, antithetic, n_tasks):
    rows = []
    for noise, d, ks in CELLS:
        for r in icl_linear_table(model, schedule, d=d, ks=ks, noise_std=noise, n_tasks=n_tasks,
                                  n_queries=2, n_samples=n, prediction_type=ptype,
                                  sampler="ddpm", n_steps=steps, antithetic=antithetic):
            rows.append((f"noise {noise} d={d} k={r['k']}", r["ratio"], r["coverage"]))
    return rows


def diabetes(steps, n, antithetic):
    X, y = load_diabetes(return_X_y=True)
    reg = DiffusionICLRegressor(n_sampling_steps=steps, n_samples=n, antithetic=antithetic,
                                random_state=0)
    sse, covered = 0.0, 0
    for train, test in KFold(5, shuffle=True, random_state=0).split(X):
        mean, std = reg.fit(X[train], y[train]).predict(X[test], return_std=True)
        sse += np.sum((mean - y[test]) ** 2)
        covered += np.sum(np.abs(y[test] - mean) <= norm.ppf(0.95) * std)
    reg.fit(X, y)
    t0 = time.perf_counter()
    reg.predict(X)
    seconds = time.perf_counter() - t0
    return 1 - sse / np.sum((y - y.mean()) ** 2), covered / len(y), seconds


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=["50x64", "25x64", "20x64", "25x32", "20x32"],
                   help="STEPSxSAMPLES, e.g. 20x32; a trailing 'a' for antithetic noise")
    p.add_argument("--tasks", type=int, default=100, help="tasks per synthetic cell")
    p.add_argument("--out", default=os.path.join(HERE, "results", "sampling_budget.md"))
    args = p.parse_args()
    spec = DiffusionICLRegressor().model_spec()
    model, schedule = get_denoiser(spec)
    results = {}
    for setting in args.settings:
        antithetic = setting.endswith("a")
        steps, n = (int(v) for v in setting.rstrip("a").split("x"))
        t0 = time.time()
        rows = synthetic(model, schedule, spec["prediction_type"], steps, n, antithetic,
                         args.tasks)
        r2, cov, sec = diabetes(steps, n, antithetic)
        rows += [("diabetes 5-fold R^2", r2, cov), ("diabetes predict 442 (s)", sec, None)]
        results[setting] = rows
        print(f"{setting}: {time.time() - t0:.0f} s; diabetes R^2 {r2:.3f} cov {cov:.3f} "
              f"predict {sec:.1f} s", flush=True)
    names = [r[0] for r in next(iter(results.values()))]
    head = "| cell | " + " | ".join(f"DDPM-{s}" for s in results) + " |"
    lines = [head, "|" + "---|" * (len(results) + 1)]
    for i, name in enumerate(names):
        cells = []
        for rows in results.values():
            _, v, c = rows[i]
            cells.append(f"{v:.3g}" + (f" / {c:.2f}" if c is not None else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    command = "python benchmarks/sampling_budget.py " + " ".join(sys.argv[1:])
    text = (f"# Sampling settings: quality against cost\n\n`{command}`. Columns: DDPM with "
            f"S steps x n samples per query ('a': antithetic noise pairs). Synthetic rows: "
            f"model MSE / Bayes MSE / 90 % coverage ({args.tasks} tasks x 2 queries); "
            f"diabetes: 5-fold R^2 / held-out 90 % coverage, and seconds for one predict of "
            f"442 rows.\n\n" + "\n".join(lines) + "\n")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
