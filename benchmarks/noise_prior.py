"""What the training prior's noise range costs, in closed form (no model, no training).

A model meta-trained to perfection on a noisy_linear prior predicts that prior's Bayes
answer: unknown intercept, noise std known only to be log-uniform in the prior's
``noise_range`` (``evaluation.noise_marginal_predictive``). This script computes that
answer for several ranges on linear tasks (w ~ N(0, I_d), raw units, as the acceptance
grid) of several true noise levels, and divides its MSE by the floor for any method that
centres its data: the unknown-intercept Bayes answer that knows the true noise
(``bayes_predictive(intercept=True)``). A narrower range helps noise-0.1 tasks near
k = d (the acceptance bar's hard cells) and must cost something on noisier tasks; this
says how much, before anyone spends a training run on it.

    python benchmarks/noise_prior.py --tasks 100 --out benchmarks/results/noise_prior.md
"""

import argparse
import os
import sys
import time

import numpy as np

from skdiffusion.evaluation import (
    bayes_predictive,
    coverage,
    linear_tasks,
    noise_marginal_predictive,
)

HERE = os.path.dirname(os.path.abspath(__file__))
RANGES = ((0.01, 5.0), (0.01, 2.0), (0.01, 1.0), (0.01, 0.5))   # the first is the default's
NOISES = (0.1, 0.3, 1.0, 3.0)


def ks_for(d):
    return sorted({d + 2, d + 3, 2 * d, 20})


def cell(d, k, noise, ranges, n_tasks, n_queries, seed):
    """{range: (MSE / floor MSE, 90 % coverage)} for one (d, k, true noise) cell."""
    Xc, yc, Xq, yq = linear_tasks(n_tasks, k, n_queries, d, noise, seed)
    floor = np.array([bayes_predictive(Xc[i], yc[i], Xq[i], noise, intercept=True)[0]
                      for i in range(n_tasks)])
    floor_mse = np.mean((floor - yq) ** 2)
    out = {}
    for r in ranges:
        pred = [noise_marginal_predictive(Xc[i], yc[i], Xq[i], r) for i in range(n_tasks)]
        m, s = np.array([p[0] for p in pred]), np.array([p[1] for p in pred])
        out[r] = (np.mean((m - yq) ** 2) / floor_mse, coverage(yq, m, s))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=100, help="tasks per cell")
    p.add_argument("--queries", type=int, default=5, help="queries per task")
    p.add_argument("--out", help="also write the Markdown here")
    args = p.parse_args()
    t0 = time.time()
    cells = {(noise, d, k): cell(d, k, noise, RANGES, args.tasks, args.queries, seed=1000 * d + k)
             for noise in NOISES for d in (2, 5, 10) for k in ks_for(d)}
    names = [f"[{lo:g}, {hi:g}]" for lo, hi in RANGES]
    head = "| true noise | " + " | ".join(names) + " |\n|---|" + "---|" * len(RANGES)
    lines = ["# The training prior's noise range, in closed form\n",
             f"`{' '.join(['python benchmarks/noise_prior.py', *sys.argv[1:]])}` "
             f"({time.time() - t0:.0f} s): {args.tasks} tasks x {args.queries} queries per "
             f"cell; d = 2, 5, 10; k = d + 2, d + 3, 2d, 20. Columns: the noise range of a "
             f"noisy_linear prior (the default's is {names[0]}); each entry is the MSE of "
             f"that prior's Bayes answer over the unknown-intercept Bayes MSE at the true "
             f"noise (1 = the floor for methods that centre their data).\n",
             "## Geometric mean over (d, k) of MSE / floor\n", head]
    for noise in NOISES:
        ratios = [[c[r][0] for key, c in cells.items() if key[0] == noise] for r in RANGES]
        lines.append(f"| {noise:g} | " + " | ".join(f"{np.exp(np.mean(np.log(x))):.2f}"
                                                   for x in ratios) + " |")
    lines += ["\n## Every cell: MSE / floor (90 % coverage of mean +- 1.645 std)\n",
              "| true noise | d | k | " + " | ".join(names) + " |\n|---|---|---|"
              + "---|" * len(RANGES)]
    for (noise, d, k), c in cells.items():
        lines.append(f"| {noise:g} | {d} | {k} | "
                     + " | ".join(f"{c[r][0]:.2f} ({c[r][1]:.2f})" for r in RANGES) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
