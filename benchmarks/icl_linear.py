"""In-context learning on linear-Gaussian tasks: model vs exact Bayes vs least squares.

Loads a model directory written by ``python -m skdiffusion pretrain`` (training it first
with the command below if the directory has no weights), then writes
``benchmarks/results/icl_linear.md`` and ``icl_linear.png`` (error against k, and the
learning curve logged during meta-training when present).

    python benchmarks/icl_linear.py --model runs/linear5_v2
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from skdiffusion.evaluation import icl_linear_table, markdown_table
from skdiffusion.pretrained import load

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN = [sys.executable, "-m", "skdiffusion", "pretrain", "--prior",
         '["noisy_linear", {"noise_range": [0.1, 0.1]}]', "--max-features", "5",
         "--min-features", "5", "--n-layer", "4", "--n-embd", "96", "--n-head", "4",
         "--steps", "3500", "--warmup", "300", "--batch-size", "64", "--n-points", "40",
         "--max-context", "20", "--lr", "5e-4", "--curve"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runs/linear5_v2", help="model directory")
    p.add_argument("--d", type=int, default=5)
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--tasks", type=int, default=200, help="tasks per k")
    p.add_argument("--queries", type=int, default=5, help="queries per task")
    p.add_argument("--samples", type=int, default=64, help="reverse-chain samples per query")
    p.add_argument("--sampler", default="ddpm", choices=["ddpm", "ddim"])
    p.add_argument("--steps", type=int, default=25, help="DDIM steps")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args()

    if not os.path.exists(os.path.join(args.model, "model.safetensors")):
        subprocess.run(TRAIN + ["--out", args.model], check=True)
    model, schedule = load(args.model)
    with open(os.path.join(args.model, "config.json")) as f:
        info = json.load(f)
    ks = (0, 1, 2, 3, 5, 6, 7, 8, 10, 15)
    t0 = time.time()
    rows = icl_linear_table(model, schedule, d=args.d, ks=ks, noise_std=args.noise,
                            n_tasks=args.tasks, n_queries=args.queries, n_samples=args.samples,
                            sampler=args.sampler, n_steps=args.steps,
                            prediction_type=info["config"]["prediction_type"])
    elapsed = time.time() - t0
    table = markdown_table(rows)
    command = "python benchmarks/icl_linear.py " + " ".join(sys.argv[1:])
    text = (f"# In-context linear regression (d={args.d}, noise std {args.noise})\n\n"
            f"`{command}` ({elapsed:.0f} s); model `{args.model}` trained with\n"
            f"`{info['summary'].get('command')}`.\n{args.tasks} tasks x {args.queries} queries "
            f"per k, {args.samples} samples per query, sampler {args.sampler}.\n"
            f"Coverage: mean +- 1.645 std of the samples.\n\n{table}\n")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "icl_linear.md"), "w") as f:
        f.write(text)
    print(text)
    plot(rows, os.path.join(args.model, "curve.jsonl"), os.path.join(args.out, "icl_linear.png"))


def plot(rows, curve_path, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ks = [r["k"] for r in rows]
    for key, label in [("mse", "skdiffusion (mean of samples)"), ("bayes_mse", "Bayes-optimal"),
                       ("lsq_mse", "least squares")]:
        axes[0].plot(ks, [r[key] for r in rows], marker="o", label=label)
    axes[0].set(yscale="log", xlabel="context size k", ylabel="MSE", title="Error against k")
    axes[0].legend()
    if os.path.exists(curve_path):
        with open(curve_path) as f:
            curve = [json.loads(line) for line in f]
        for k in curve[0]["ratio"]:
            axes[1].plot([c["step"] for c in curve], [c["ratio"][k] for c in curve], label=f"k={k}")
        axes[1].set(yscale="log", xlabel="meta-training step", ylabel="MSE / Bayes (posterior mean)",
                    title="Learning curve")
        axes[1].axhline(1.0, color="gray", lw=0.5)
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
