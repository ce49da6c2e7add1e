"""What the network adds as queries leave the context's range, on tasks of its own prior.

Draws tasks from the model's meta-training prior (its mixed inputs: skewed, integer,
binary and correlated columns), samples each query with the trained model and with the
same configuration at step 0 (a zero head: its closed-form Gaussian through the same
chain, same noise), both with the extrapolation gate off, and prints CRPS and squared
error trained / untrained (below 1: the network helped) by how far the query lies beyond
the context's range, in context standard deviations (``inference.beyond_context``);
then what the estimator's gate (``inference.extrapolated``: beyond
``inference.EXTRAPOLATION`` in a context of k >= d + 2 points, sampled untrained) changes.

    python benchmarks/extrapolation.py --model default --out benchmarks/results/extrapolation.md
"""

import argparse
import math
import sys
import time
from unittest.mock import patch

import numpy as np
import scoringrules
import torch

from skdiffusion import inference
from skdiffusion.bench.model import BenchModel
from skdiffusion.pretrained import _prior, build

BINS = (0.0, 1e-9, 0.5, 1.0, 2.0, 3.0, math.inf)  # 0: inside the range


def scores(bench, untrained, d, k, n_tasks, n_queries, n_samples, seed):
    """Per query (distance beyond the context, gated by the estimator?, CRPS trained,
    untrained, squared error trained, untrained), in units of the context's y standard
    deviation."""
    g = torch.Generator().manual_seed(seed)
    prior = _prior(bench.spec)
    sample_x = getattr(prior, "sample_x", None)  # the linear priors draw x ~ N(0, I)
    X = (sample_x(n_tasks, k + n_queries, d, g) if sample_x is not None
         else torch.randn((n_tasks, k + n_queries, d), generator=g))
    y = prior.sample_y(X, g).to(X.dtype)
    Xc, yc, Xq, yq = X[:, :k], y[:, :k], X[:, k:], y[:, k:]
    x_c, _, x_q, _, y_scale = inference.standardize_tasks(Xc, yc, Xq)
    out = [inference.beyond_context(x_c, x_q), inference.extrapolated(x_c, x_q)]
    with patch.object(inference, "EXTRAPOLATION", math.inf):  # the network everywhere
        draws = [inference.sample_raw_tasks(m, bench.schedule, Xc, yc, Xq, n_samples,
                                            torch.Generator().manual_seed(seed),
                                            **bench.sampler_kw)
                 for m in (bench.denoiser, untrained)]
    scale = y_scale[..., 0].double().numpy()            # (n_tasks, 1)
    truth = yq.double().numpy()
    out += [scoringrules.crps_ensemble(truth, s.double().numpy(), estimator="fair") / scale
            for s in draws]
    out += [((s.double().numpy().mean(-1) - truth) / scale) ** 2 for s in draws]
    return np.stack([np.asarray(v, dtype=float).ravel() for v in out], 1)


def table(rows, ks, ds):
    """Markdown: per context size and distance bin, the queries and the two ratios; per
    (d, k), the same for the queries beyond ``EXTRAPOLATION``; then per context size, the
    share of queries the estimator gates and what that changes."""
    lines = ["| k | beyond the range (context sd) | queries | CRPS trained / untrained "
             "| squared error trained / untrained |", "|---|---|---|---|---|"]
    for k in [*ks, "all"]:
        sel = rows if k == "all" else rows[rows[:, 0] == k]
        for lo, hi in zip(BINS[:-1], BINS[1:]):
            r = sel[(sel[:, 1] >= lo) & (sel[:, 1] < hi)]
            if not len(r):
                continue
            name = "inside" if hi == BINS[1] else f"{lo if lo > BINS[1] else 0:g}-{hi:g}"
            lines.append(f"| {k} | {name} | {len(r)} | {r[:, 3].sum() / r[:, 4].sum():.3f} "
                         f"| {r[:, 5].sum() / r[:, 6].sum():.3f} |")
    far = rows[rows[:, 1] > inference.EXTRAPOLATION]
    lines += ["", f"Queries beyond {inference.EXTRAPOLATION:g} context sd, by (d, k):", "",
              "| d | k | k >= d + 2 | queries | CRPS trained / untrained "
              "| squared error trained / untrained |", "|---|---|---|---|---|---|"]
    for d in ds:
        for k in ks:
            r = far[(far[:, 0] == k) & (far[:, 7] == d)]
            if len(r):
                lines.append(f"| {d} | {k} | {'yes' if k >= d + 2 else 'no'} | {len(r)} "
                             f"| {r[:, 3].sum() / r[:, 4].sum():.3f} "
                             f"| {r[:, 5].sum() / r[:, 6].sum():.3f} |")
    lines += ["", f"The estimator's gate (beyond {inference.EXTRAPOLATION:g} context sd, "
              "k >= d + 2) against the network everywhere:", "",
              "| k | queries gated | CRPS gated / not | squared error gated / not |",
              "|---|---|---|---|"]
    for k in [*ks, "all"]:
        r = rows if k == "all" else rows[rows[:, 0] == k]
        gate = r[:, 2] > 0
        crps, err = np.where(gate, r[:, 4], r[:, 3]), np.where(gate, r[:, 6], r[:, 5])
        lines.append(f"| {k} | {gate.mean():.3f} | {crps.sum() / r[:, 3].sum():.4f} "
                     f"| {err.sum() / r[:, 5].sum():.4f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default", help="a model directory or shipped name")
    p.add_argument("--ks", default="10,30,100", help="context sizes")
    p.add_argument("--ds", default="1,3,5,10", help="numbers of features")
    p.add_argument("--tasks", type=int, default=200, help="tasks per (d, k) cell")
    p.add_argument("--queries", type=int, default=16)
    p.add_argument("--samples", type=int, default=24)
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--out", help="also write the table here (Markdown)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ks, ds = [int(v) for v in args.ks.split(",")], [int(v) for v in args.ds.split(",")]
    bench = BenchModel({"model": args.model})
    untrained, _ = build(bench.spec)
    t0, rows = time.perf_counter(), []
    for k in ks:
        for d in ds:
            s = scores(bench, untrained.eval(), d, k, args.tasks, args.queries, args.samples,
                       1009 * d + k)
            rows.append(np.concatenate([np.full((len(s), 1), k), s, np.full((len(s), 1), d)], 1))
    rows = np.concatenate(rows)
    command = " ".join(["python benchmarks/extrapolation.py", *(argv or sys.argv[1:])])
    text = (f"`{command}` ({time.perf_counter() - t0:.0f} s)\n\nModel `{args.model}`, tasks of "
            f"its own prior, d in {ds}, {args.tasks} tasks x {args.queries} queries per (d, k), "
            f"{args.samples} independent samples; ratios of sums over the queries of each row."
            f"\n\n{table(rows, ks, ds)}\n")
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
