"""Learning curves and model comparison by the cheap posterior-mean probe.

For each model directory (and its ``snapshots/STEP`` directories written by
``scripts/pretrain_on_budget.py``), the MSE of the network's estimate of E[y | context, x]
(one denoising step from pure noise, no sampling) over the exact Bayes MSE, on
linear-Gaussian tasks (noise std 0.1 unless ``--noise``) at d in {2, 5, 10}. Cheap enough
to compare many models; ``benchmarks/acceptance.py`` measures the sampled predictions of
one model.

    python benchmarks/learning_curve.py runs/gpu/evidence runs/gpu/fixed
"""

import argparse
import os
import sys

from skdiffusion.checkpoint import read_config
from skdiffusion.evaluation import posterior_mean_ratio
from skdiffusion.pretrained import load


def ks_for(d):
    return (1, 2, 3, d, d + 2, 2 * d, 20, 40)


def directories(run):
    snaps = os.path.join(run, "snapshots")
    steps = sorted(int(s) for s in os.listdir(snaps)) if os.path.isdir(snaps) else []
    finished = os.path.exists(os.path.join(run, "config.json"))  # else still training
    return [(os.path.join(snaps, str(s)), s) for s in steps] + [(run, None)] * finished


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="model directories")
    p.add_argument("--tasks", type=int, default=512, help="tasks per (d, k)")
    p.add_argument("--noise", type=float, default=0.1, help="noise std of the tasks")
    args = p.parse_args()
    print("`python benchmarks/learning_curve.py " + " ".join(sys.argv[1:]) + "`\n")
    print("| model | steps | d | " + " | ".join(f"k={i}" for i in ("1", "2", "3", "d", "d+2", "2d", "20", "40")) + " |")
    print("|---|---|---|" + "---|" * 8)
    for run in args.runs:
        for directory, step in directories(run):
            config = read_config(directory)
            model, schedule = load(directory)
            steps = step or config.get("summary", {}).get("steps") or config["config"]["train"]["n_steps"]
            for d in (2, 5, 10):
                r = posterior_mean_ratio(model, schedule, config["config"]["prediction_type"], d=d,
                                         ks=ks_for(d), noise_std=args.noise, n_tasks=args.tasks)
                print(f"| {os.path.basename(run)} | {steps} | {d} | "
                      + " | ".join(f"{r[k]:.2f}" for k in ks_for(d)) + " |", flush=True)


if __name__ == "__main__":
    main()
