"""90 % coverage that a model trained to perfection on the default prior would reach on the
acceptance grid's tasks, with the interval the estimator's predictions get: mean +- 1.645
std of 24 draws, as against mean +- 1.645 times the exact std (``acceptance.md``'s column
"prior's Bayes coverage", which the first column here reproduces). The draws are
independent, or antithetic pairs as the estimator's are (pairs mirrored about the mean of
their shared noise cell, ``noise_marginal_samples(antithetic=True)``); each cell averages
40 sets of draws. The column "exact 90 %" scores the exact central 90 % interval instead,
from the mixture's CDF (``noise_marginal_cdf``): heavy tails make mean +- 1.645 std wider.
The last column scores the exact central 90 % interval of the answer for a model that sees
y only standardized (``scale_free_cdf``, k >= 3).

    python benchmarks/prior_coverage.py
"""

import argparse
import os
import sys
import time

import numpy as np
from acceptance import ks_for

from skdiffusion.estimator import DiffusionICLRegressor
from skdiffusion.evaluation import (
    coverage,
    linear_tasks,
    noise_marginal_cdf,
    noise_marginal_predictive,
    noise_marginal_samples,
    scale_free_cdf,
)
from skdiffusion.priors import make_prior

HERE = os.path.dirname(os.path.abspath(__file__))
IN_RANGE = (0.86, 0.94)


def central_90(pit):
    """Fraction of PIT values inside the central 90 % band."""
    return np.mean(np.abs(pit - 0.5) <= 0.45)


def cell(d, k, noise_range, n_tasks, n_queries, n_samples, n_sets, rng):
    """Coverage at (d, k) of the exact std, of n_samples-draw intervals (independent and
    antithetic) and of the exact central 90 % interval; the tasks are those of
    ``icl_linear_table(seed=0)``, as ``benchmarks/acceptance.py`` draws them."""
    Xc, yc, Xq, yq = linear_tasks(n_tasks, k, n_queries, d, 0.1, seed=k)
    scores = []
    for i in range(n_tasks):
        mean, std = noise_marginal_predictive(Xc[i], yc[i], Xq[i], noise_range)
        row = [coverage(yq[i], mean, std)]
        for antithetic in (False, True):
            draws = noise_marginal_samples(Xc[i], yc[i], Xq[i], noise_range, n_sets * n_samples,
                                           rng, antithetic=antithetic)
            draws = draws.reshape(n_sets, n_samples, -1)
            half = 1.645 * draws.std(1, ddof=1)
            row.append(np.mean(np.abs(yq[i] - draws.mean(1)) <= half))
        row.append(central_90(noise_marginal_cdf(Xc[i], yc[i], Xq[i], yq[i], noise_range)))
        row.append(central_90(scale_free_cdf(Xc[i], yc[i], Xq[i], yq[i], noise_range))
                   if k >= 3 else np.nan)
        scores.append(row)
    return tuple(np.mean(scores, axis=0).tolist())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=DiffusionICLRegressor().n_samples)
    p.add_argument("--sets", type=int, default=40, help="sets of draws averaged per cell")
    p.add_argument("--out", default=os.path.join(HERE, "results", "prior_coverage.md"))
    args = p.parse_args()
    noise_range = make_prior(DiffusionICLRegressor().model_spec()["prior"]).noise_range
    rng, t0, rows = np.random.default_rng(0), time.time(), []
    for d in (2, 5, 10):
        for k in ks_for(d):
            rows.append((d, k, *cell(d, k, noise_range, 100, 5, args.samples, args.sets, rng)))
    inside = [sum(IN_RANGE[0] <= r[i] <= IN_RANGE[1] for r in rows) for i in (2, 3, 4, 5, 6)]
    command = " ".join(["python benchmarks/prior_coverage.py", *sys.argv[1:]])
    lines = [f"# Coverage of the prior's Bayes answer, exact and sampled\n\n`{command}` "
             f"({time.time() - t0:.0f} s): noise std log-uniform in {list(noise_range)}, the "
             f"acceptance grid's tasks (noise 0.1, 100 x 5 per cell), {args.samples} "
             f"draws per interval, {args.sets} sets per cell.\n",
             f"In {list(IN_RANGE)}: {inside[0]}/{len(rows)} cells with the exact std, "
             f"{inside[1]}/{len(rows)} with {args.samples} independent draws, "
             f"{inside[2]}/{len(rows)} with {args.samples} antithetic draws, "
             f"{inside[3]}/{len(rows)} with the exact central 90 % interval; scale-free: "
             f"{inside[4]}/{sum(r[1] >= 3 for r in rows)}.\n",
             f"| d | k | exact std | {args.samples} independent | {args.samples} antithetic "
             "| exact 90 % | scale-free exact 90 % |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {d} | {k} | {e:.3f} | {s:.3f} | {a:.3f} | {q:.3f} | "
              + ("-" if np.isnan(f) else f"{f:.3f}") + " |" for d, k, e, s, a, q, f in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
