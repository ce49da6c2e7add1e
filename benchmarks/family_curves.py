"""Learning curves per task family: CRPS relative to the ARD GP against meta-training.

For each model directory (and, with ``--snapshots``, each of its ``snapshots/STEP``
weights), runs the predictive benchmark of ``python -m skdiffusion.bench``
(:func:`skdiffusion.bench.predictive.compare`: GP draws with Gaussian, heteroscedastic,
Student t or bimodal noise, d x k cells, each method fitted to each task's context) for
the model and for its closed-form baseline alone ("features alone", the step-0 model),
and reports per family the geometric mean over cells of CRPS / the ARD GP's CRPS.

    python benchmarks/family_curves.py runs/fn/head runs/fn/gp --snapshots \
        --out benchmarks/results/family_curves
"""

import argparse
import glob
import json
import os
import time

import numpy as np

from skdiffusion.bench.predictive import FAMILIES, FEATURES_ALONE, compare
from skdiffusion.checkpoint import read_config


def models(directories, snapshots):
    """[(directory, tasks seen)] in training order."""
    out = []
    for directory in directories:
        dirs = sorted(glob.glob(os.path.join(directory, "snapshots", "*")),
                      key=lambda p: int(os.path.basename(p))) if snapshots else []
        if os.path.exists(os.path.join(directory, "config.json")):
            dirs.append(directory)
        for d in dirs:
            cfg = read_config(d)
            steps = cfg["summary"].get("steps", cfg["config"]["train"]["n_steps"])
            out.append((d, steps * cfg["config"]["train"]["batch_size"]))
    return out


def geo_mean_ratio(rows, method, family):
    r = [row["crps_vs_gp"] for row in rows if row["method"] == method and row["family"] == family]
    return float(np.exp(np.mean(np.log(r))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("directories", nargs="+")
    p.add_argument("--snapshots", action="store_true", help="also every snapshots/STEP")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--ds", default="1,3,5")
    p.add_argument("--ks", default="10,30,100")
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--queries", type=int, default=25)
    p.add_argument("--out", help="directory for curves.md, curves.json and curves.png")
    args = p.parse_args(argv)
    families = tuple(args.families.split(","))
    grid = dict(families=families, ds=tuple(int(v) for v in args.ds.split(",")),
                ks=tuple(int(v) for v in args.ks.split(",")), n_tasks=args.tasks,
                n_queries=args.queries)
    results, baselines = [], {}
    for directory, tasks_seen in models(args.directories, args.snapshots):
        t0 = time.perf_counter()
        base = read_config(directory)["config"].get("head", {}).get("baseline", "ridge")
        only = ("skdiffusion",) if base in baselines else ("skdiffusion", FEATURES_ALONE)
        rows = compare({"model": directory}, only=only, **grid)
        if base not in baselines:
            baselines[base] = {f: geo_mean_ratio(rows, FEATURES_ALONE, f) for f in families}
        ratios = {f: geo_mean_ratio(rows, "skdiffusion", f) for f in families}
        results.append({"model": directory, "baseline": base, "tasks": tasks_seen,
                        "crps_vs_gp": ratios, "seconds": time.perf_counter() - t0})
        print(f"{directory}: {tasks_seen} tasks  "
              + "  ".join(f"{f} {v:.3f}" for f, v in ratios.items()), flush=True)
    header = "| model | baseline | tasks seen | " + " | ".join(families) + " |"
    lines = [header, "|" + "---|" * (3 + len(families))]
    for base, ratios in baselines.items():
        lines.append(f"| features alone | {base} | 0 | "
                     + " | ".join(f"{ratios[f]:.3f}" for f in families) + " |")
    for r in results:
        lines.append(f"| {r['model']} | {r['baseline']} | {r['tasks']} | "
                     + " | ".join(f"{r['crps_vs_gp'][f]:.3f}" for f in families) + " |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "curves.json"), "w") as f:
            json.dump({"grid": grid, "features_alone": baselines, "models": results}, f, indent=1)
        with open(os.path.join(args.out, "curves.md"), "w") as f:
            f.write(f"CRPS / ARD GP's, geometric mean over the cells {grid}\n\n{table}\n")
        plot(results, baselines, families, os.path.join(args.out, "curves.png"))


def plot(results, baselines, families, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(families), figsize=(4 * len(families), 3.5), squeeze=False)
    for ax, family in zip(axes[0], families):
        for i, base in enumerate(baselines):
            rs = [r for r in results if r["baseline"] == base]
            line, = ax.plot([max(r["tasks"], 1) for r in rs], [r["crps_vs_gp"][family] for r in rs],
                            marker="o", label=f"{base} baseline + network")
            ax.axhline(baselines[base][family], color=line.get_color(), ls=":",
                       label=f"{base} features alone")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set(xscale="log", xlabel="tasks seen in meta-training", title=family,
               ylabel="CRPS / ARD GP's")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
