"""Wall time of fit and predict with the shipped default model on this machine.

    python benchmarks/speed.py
"""

import time

import numpy as np
import torch
from sklearn.datasets import load_diabetes

from skdiffusion import DiffusionICLRegressor


def timed(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    X, y = load_diabetes(return_X_y=True)
    DiffusionICLRegressor().fit(X, y)  # load the shipped weights once (process cache)
    rows = [("fit 442 x 10 (default, no training)",
             timed(lambda: DiffusionICLRegressor().fit(X, y)))]
    rng = np.random.default_rng(0)
    Xc, yc, Xq = rng.standard_normal((20, 5)), rng.standard_normal(20), rng.standard_normal((100, 5))
    for sampler, steps in [("ddim", 25), ("ddpm", None)]:
        reg = DiffusionICLRegressor(sampler=sampler, n_sampling_steps=steps or 25,
                                    n_samples=64, random_state=0).fit(Xc, yc)
        label = f"predict 100 queries, 20 context, 64 samples, {sampler.upper()}-{steps or 50}"
        rows.append((label, timed(lambda: reg.predict(Xq), repeat=2)))
    reg = DiffusionICLRegressor(random_state=0).fit(X, y)
    rows.append(("predict 442 diabetes queries, default settings (DDPM-50, 64 samples)",
                 timed(lambda: reg.predict(X), repeat=1)))
    print("| operation | seconds |\n|---|---|")
    for label, sec in rows:
        print(f"| {label} | {sec:.2f} |")


if __name__ == "__main__":
    main()
