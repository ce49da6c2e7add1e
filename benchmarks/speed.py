"""Wall time of fit and predict on this machine, for the set and the head architecture.

    python benchmarks/speed.py                      # the shipped models
    python benchmarks/speed.py --head runs/fn/gp    # head: a trained model directory

Times (median of ``--repeat`` calls, at 1 and 2 torch threads): fit on diabetes, predict
all 442 diabetes rows with a 353-row context (the default 24 samples x 20 DDPM steps),
and 100 queries with a 20-row context and 64 samples. "set" is the shipped ``"linear"``
model, "head" the shipped default (a head with the GP baseline) or ``--head DIR``. Each
predict is timed as the first call after ``fit``, which fits the GP baseline to the
context, and as a second call, which reuses that fit.
"""

import argparse
import time

import numpy as np
import torch
from sklearn.datasets import load_diabetes

from skdiffusion import DiffusionICLRegressor


def seconds(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def timed(fn, repeat):
    """Median wall time of ``repeat`` calls (after one warm-up call)."""
    fn()
    return float(np.median([seconds(fn) for _ in range(repeat)]))


def first_and_again(fitted, X, repeat):
    """Median wall times of the first and the second ``predict(X)`` of ``repeat``
    estimators ``fitted()`` (after one warm-up estimator)."""
    fitted().predict(X)
    times = []
    for _ in range(repeat):
        reg = fitted()
        times.append([seconds(lambda: reg.predict(X)) for _ in range(2)])
    first, again = np.median(times, axis=0)
    return f"{first:.3f} / {again:.3f}"


def rows_for(model, repeat):
    X, y = load_diabetes(return_X_y=True)
    rng = np.random.default_rng(0)
    Xc, yc, Xq = rng.standard_normal((20, 5)), rng.standard_normal(20), rng.standard_normal((100, 5))
    fit = timed(lambda: DiffusionICLRegressor(model).fit(X, y), repeat)
    diabetes = first_and_again(
        lambda: DiffusionICLRegressor(model, random_state=0).fit(X[:353], y[:353]), X, repeat)
    small = first_and_again(
        lambda: DiffusionICLRegressor(model, random_state=0, n_samples=64).fit(Xc, yc), Xq, repeat)
    return fit, diabetes, small


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--head", help="trained head model directory (default: the shipped default)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", default="1,2", help="torch thread counts, comma-separated")
    p.add_argument("--only", choices=("set", "head"), help="time one architecture only")
    args = p.parse_args()
    head = args.head or "default"
    models = {'set ("linear")': "linear", f"head ({head})": head}
    if args.only:
        models = {k: v for k, v in models.items() if k.startswith(args.only)}
    print(f"torch {torch.__version__}; median of {args.repeat}; defaults: "
          f"{DiffusionICLRegressor().n_samples} antithetic samples x "
          f"{DiffusionICLRegressor().n_sampling_steps} DDPM steps\n")
    print("| architecture | torch threads | fit diabetes (442 x 10), s | predict 442 diabetes "
          "queries, 353-row context (first / again), s | predict 100 queries, 20 context, "
          "64 samples (first / again), s |")
    print("|---|---|---|---|---|")
    for threads in map(int, args.threads.split(",")):
        torch.set_num_threads(threads)
        for label, model in models.items():
            fit, diabetes, small = rows_for(model, args.repeat)
            print(f"| {label} | {threads} | {fit:.3f} | {diabetes} | {small} |", flush=True)

if __name__ == "__main__":
    main()
