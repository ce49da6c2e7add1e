"""Which cells of the accuracy bar any estimator that standardizes y could meet.

``acceptance.py`` scores the model against the exact Bayes answer (zero intercept, noise
std 0.1 known) on 100 tasks per cell. No estimator that standardizes y and sees it no
other way, as this one (``tests/test_estimator.py::test_targets_in_any_units``: its
predictions shift and scale with y), can beat the unknown-intercept Bayes answer on these tasks: conditioning on what such
an estimator sees (the context up to y -> a y + b) leaves the flat-intercept posterior
mean, and the ridge it implies depends only on noise / weight scale, which standardizing
does not change. So a cell is out of reach for every such estimator, however trained,
when that answer's MSE is above the bar. This prints, per (d, k), that answer's MSE and
the answer of a model trained to perfection on the default prior (noise std log-uniform
in [0.01, 5]), both over the Bayes MSE, on many fresh tasks (their 95 % intervals by the
delta method over tasks), and counts the cells each can meet. No model is run. As a
check on the simulation, from k = 2d on the first ratio is close to least squares' ratio
with and without an intercept, (1 + 1/k) (1 + d / (k - d - 2)) / (1 + d / (k - d - 1))
(inverse-Wishart means, shown for k >= d + 3); nearer k = d the prior's shrinkage, which
least squares lacks, keeps the Bayes answers' ratio lower.

    python benchmarks/bar_ceiling.py --out benchmarks/results/bar_ceiling.md
"""

import argparse
import sys
import time

import numpy as np
from acceptance import bar, ks_for

from skdiffusion.evaluation import (
    bayes_predictive,
    linear_tasks,
    noise_marginal_predictive,
    ratio_interval,
)

NOISE, PRIOR_RANGE = 0.1, (0.01, 5.0)


def per_task_mse(d, k, n_tasks, n_queries=5):
    """(n_tasks, 3) query-mean squared errors of the Bayes, unknown-intercept Bayes and
    prior's Bayes means, on fresh tasks (seeds apart from acceptance.py's)."""
    Xc, yc, Xq, yq = linear_tasks(n_tasks, k, n_queries, d, NOISE, seed=10_000 + 100 * d + k)
    out = np.empty((n_tasks, 3))
    for t in range(n_tasks):
        means = (bayes_predictive(Xc[t], yc[t], Xq[t], NOISE)[0],
                 bayes_predictive(Xc[t], yc[t], Xq[t], NOISE, intercept=True)[0],
                 noise_marginal_predictive(Xc[t], yc[t], Xq[t], PRIOR_RANGE)[0])
        out[t] = [np.mean((m - yq[t]) ** 2) for m in means]
    return out


def least_squares_ratio(d, k):
    """E[MSE] of least squares with an intercept over that without one, Gaussian x."""
    return (1 + 1 / k) * (1 + d / (k - d - 2)) / (1 + d / (k - d - 1)) if k >= d + 3 else None


def verdict(r, half, limit):
    return "yes" if r + half <= limit else "no" if r - half > limit else "in doubt"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=20_000, help="tasks per (d, k)")
    p.add_argument("--out", help="also write the table to this markdown file")
    args = p.parse_args()
    t0 = time.time()
    rows, counts = [], {"shift": [0, 0], "prior": [0, 0]}
    for d in (2, 5, 10):
        for k in ks_for(d):
            limit = bar(d, k)
            if limit is None:
                continue
            mse = per_task_mse(d, k, args.tasks)
            cells = [str(d), str(k), str(limit)]
            for name, col in (("shift", 1), ("prior", 2)):
                r, half = ratio_interval(mse[:, col], mse[:, 0])
                v = verdict(r, half, limit)
                counts[name][0] += v == "yes"
                counts[name][1] += v != "no"
                cells += [f"{r:.3f} +- {half:.3f}", v]
                if name == "shift":
                    ls = least_squares_ratio(d, k)
                    cells.append(f"{ls:.3f}" if ls else "-")
            rows.append("| " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    reach = {name: f"{yes} of {len(rows)}, {not_no - yes} in doubt"
             for name, (yes, not_no) in counts.items()}
    head = (f"`python benchmarks/bar_ceiling.py {' '.join(sys.argv[1:])}` "
            f"({time.time() - t0:.0f} s): {args.tasks} tasks x 5 queries per (d, k), noise std "
            f"{NOISE}; ratio of mean MSEs to the Bayes answer's, with its 95 % interval.\n\n"
            f"Bar cells within reach (95 % interval wholly under the bar), and in doubt "
            f"(interval across it): any estimator that standardizes y: {reach['shift']}; a "
            f"model trained to perfection on the default prior: {reach['prior']}.\n\n"
            "| d | k | bar | unknown-intercept Bayes / Bayes | within reach "
            "| least squares, closed form | prior's Bayes / Bayes | within reach |\n"
            "|---|---|---|---|---|---|---|---|\n")
    text = head + "\n".join(rows) + "\n"
    print("\n" + text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
