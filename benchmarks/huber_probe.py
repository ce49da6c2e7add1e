"""Where meta-training's Huber loss stops being quadratic: for trained models, on tasks of
their own training prior, the fraction of target tokens whose error in the loss's units
(``training.scaled_errors``) exceeds ``huber_delta``, and the rms
of that error, per (d, k). Where the linear baseline's variance is right, the error is
about N(0, 1) and the loss is a squared error, whose minimizer is the mean E[target | y_t]
that the reverse chain needs; where the fraction is large, the loss is closer to an
absolute error there and its minimizer is not that mean.

    python benchmarks/huber_probe.py                 # the shipped default model
    python benchmarks/huber_probe.py shipped runs/cap100_5500 runs/cap100c_5500/snapshots/2000
"""

import argparse
import sys

import torch

from skdiffusion.bench.model import load_trained
from skdiffusion.priors import make_prior, sample_tasks
from skdiffusion.training import TrainConfig, scaled_errors


def ks_for(d):
    return (2, 3, d, d + 1, d + 2, 20)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", default=["shipped"],
                   help="model directories, or 'shipped' for the shipped default model")
    p.add_argument("--tasks", type=int, default=256, help="tasks per (d, k)")
    p.add_argument("--points", type=int, default=64, help="points per task (context + targets)")
    args = p.parse_args()
    delta = TrainConfig().huber_delta
    print("# Where the training loss is not a squared error\n")
    print(f"`python benchmarks/huber_probe.py {' '.join(sys.argv[1:])}`: {args.tasks} tasks of "
          f"{args.points} points per (d, k); fraction of target tokens with |error| > "
          f"{delta} (rms of the error)\n")
    print("| model | d | " + " | ".join(("k=2", "k=3", "k=d", "k=d+1", "k=d+2", "k=20")) + " |")
    print("|---|---|" + "---|" * 6)
    for directory in args.models:
        spec, model, schedule = load_trained(directory)
        model.eval()
        prior, g = make_prior(spec["prior"]), torch.Generator().manual_seed(0)
        for d in (2, 5, 10):
            cells = []
            for k in ks_for(d):
                batch = sample_tasks(prior, args.tasks, args.points, model.max_features, g,
                                     d, d, k, k)
                with torch.no_grad():
                    e = scaled_errors(model, schedule, batch, spec["prediction_type"], g)
                e = e[~batch.is_context]
                cells.append(f"{(e.abs() > delta).float().mean():.3f} ({e.pow(2).mean().sqrt():.2f})")
            print(f"| {directory} | {d} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
