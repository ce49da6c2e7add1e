"""Wall time of fit and predict on this machine, for the set and the head architecture.

    python benchmarks/speed.py                      # the shipped models
    python benchmarks/speed.py --head runs/fn/gp    # head: a trained model directory

Times (median of ``--repeat`` calls, at 1 and 2 torch threads): fit on diabetes, predict
all 442 diabetes rows with a 353-row context (the default 24 samples x 20 DDPM steps),
and 100 queries with a 20-row context and 64 samples. "set" is the shipped ``"linear"``
model, "head" the shipped default (a head with the GP baseline) or ``--head DIR``.
"""

import argparse
import time

import numpy as np
import torch
from sklearn.datasets import load_diabetes

from skdiffusion import DiffusionICLRegressor


def timed(fn, repeat):
    """Median wall time of ``repeat`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def rows_for(model, repeat):
    X, y = load_diabetes(return_X_y=True)
    rng = np.random.default_rng(0)
    Xc, yc, Xq = rng.standard_normal((20, 5)), rng.standard_normal(20), rng.standard_normal((100, 5))
    reg = DiffusionICLRegressor(model, random_state=0)
    fit = timed(lambda: DiffusionICLRegressor(model).fit(X, y), repeat)
    reg.fit(X[:353], y[:353])
    diabetes = timed(lambda: reg.predict(X), repeat)
    small = DiffusionICLRegressor(model, random_state=0, n_samples=64).fit(Xc, yc)
    return fit, diabetes, timed(lambda: small.predict(Xq), repeat)


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
          "queries, 353-row context, s | predict 100 queries, 20 context, 64 samples, s |")
    print("|---|---|---|---|---|")
    for threads in map(int, args.threads.split(",")):
        torch.set_num_threads(threads)
        for label, model in models.items():
            fit, diabetes, small = rows_for(model, args.repeat)
            print(f"| {label} | {threads} | {fit:.3f} | {diabetes:.3f} | {small:.3f} |",
                  flush=True)

if __name__ == "__main__":
    main()
