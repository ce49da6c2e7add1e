"""What meta-training changed on small contexts: each model against its own untrained self.

For each model (a trained-model directory, or a shipped model by name), draws tasks of
the ``functions`` prior's linear and GP families with each noise kind (scale log-uniform
in ``--noise-range``, x ~ N(0, I_d)) at near-determined contexts (k = d + 2, d + 3) and
at one larger k, samples the model and the same configuration at step 0 (a zero head:
its closed-form features through the same chain, same noise), and prints the ratios
trained / untrained of the MSE of the sample mean and of the CRPS (below 1: meta-training
helped), with their geometric means per family over the near-determined cells.

    python benchmarks/small_contexts.py default runs/fn/lin30/snapshots/1000
"""

import argparse
import time

import numpy as np
import scoringrules
import torch

from skdiffusion.bench.model import BenchModel
from skdiffusion.inference import sample_raw_tasks
from skdiffusion.pretrained import build
from skdiffusion.priors import NOISES, Functions

FAMILIES = ("linear", "gp")
CELLS = ((2, 4), (2, 5), (5, 7), (5, 8), (10, 12), (10, 13), (5, 30))


def tasks(family, noise, d, k, n_tasks, n_queries, noise_range, seed):
    """(X_ctx, y_ctx, X_q, y_q) float32 tensors of one cell."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn((n_tasks, k + n_queries, d), generator=g)
    prior = Functions(families={family: 1.0}, noise_weights={noise: 1.0},
                      noise_range=noise_range)
    y = prior.sample_y(X, g).float()
    return X[:, :k], y[:, :k], X[:, k:], y[:, k:]


def scores(model, schedule, cell, n_samples, sampler_kw):
    """(MSE of the sample mean, mean fair CRPS) of ``model`` on one cell's tasks."""
    Xc, yc, Xq, yq = cell
    s = sample_raw_tasks(model, schedule, Xc, yc, Xq, n_samples, torch.Generator().manual_seed(0),
                         **sampler_kw).double().numpy()
    y = yq.double().numpy()
    crps = scoringrules.crps_ensemble(y.ravel(), s.reshape(y.size, -1), estimator="fair")
    return float(np.mean((s.mean(-1) - y) ** 2)), float(np.mean(crps))


def compare(name, families, noises, cells, n_tasks, n_queries, n_samples, noise_range):
    """Rows {family, noise, d, k, mse_ratio, crps_ratio} of one model."""
    bench = BenchModel({"model": name})  # the estimator's sampler, independent samples
    model, schedule, kw = bench.denoiser, bench.schedule, bench.sampler_kw
    untrained, _ = build(bench.spec)
    rows = []
    for fi, family in enumerate(families):
        for ni, noise in enumerate(noises):
            for d, k in cells:
                if d > bench.spec["max_features"]:
                    continue
                cell = tasks(family, noise, d, k, n_tasks, n_queries, noise_range,
                             10007 * fi + 1009 * ni + 31 * d + k)
                (m1, c1), (m0, c0) = (scores(m, schedule, cell, n_samples, kw)
                                      for m in (model, untrained))
                rows.append({"family": family, "noise": noise, "d": d, "k": k,
                             "mse_ratio": m1 / m0, "crps_ratio": c1 / c0})
    return rows


def summary(rows, family):
    """Geometric means of the ratios over a family's near-determined cells (k <= d + 3)."""
    sel = [r for r in rows if r["family"] == family and r["k"] <= r["d"] + 3]
    return tuple(float(np.exp(np.mean(np.log([r[key] for r in sel]))))
                 for key in ("mse_ratio", "crps_ratio"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="model directories or shipped names")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--noises", default=",".join(NOISES))
    p.add_argument("--tasks", type=int, default=400)
    p.add_argument("--queries", type=int, default=5)
    p.add_argument("--samples", type=int, default=24)
    p.add_argument("--noise-range", default="0.02,0.1", help="noise std range, lo,hi")
    args = p.parse_args(argv)
    families, noises = args.families.split(","), args.noises.split(",")
    noise_range = tuple(float(v) for v in args.noise_range.split(","))
    results = {}
    for name in args.models:
        t0 = time.perf_counter()
        results[name] = compare(name, families, noises, CELLS, args.tasks, args.queries,
                                args.samples, noise_range)
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"\ntrained / untrained, MSE of the sample mean and CRPS; {args.tasks} tasks x "
          f"{args.queries} queries per cell, {args.samples} samples, noise std log-uniform "
          f"in {noise_range}\n")
    print("| family | noise | d | k | " + " | ".join(args.models) + " |")
    print("|---|---|---|---|" + "---|" * len(args.models))
    for i, row in enumerate(results[args.models[0]]):
        cells = [f"{results[m][i]['mse_ratio']:.2f} / {results[m][i]['crps_ratio']:.3f}"
                 for m in args.models]
        print(f"| {row['family']} | {row['noise']} | {row['d']} | {row['k']} | "
              + " | ".join(cells) + " |")
    for family in families:
        cells = ["%.2f / %.3f" % summary(results[m], family) for m in args.models]
        print(f"| {family}, k <= d + 3 | geometric mean | | | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
