"""Wall time of fit and predict with the shipped default model on this machine.

    python benchmarks/speed.py
"""

import time

import numpy as np
import torch
from sklearn.datasets import load_diabetes

from skdiffusion import DiffusionICLRegressor


def timed(fn, repeat=3):
    """Median wall time of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    X, y = load_diabetes(return_X_y=True)
    default = DiffusionICLRegressor()
    settings = f"DDPM-{default.n_sampling_steps}, {default.n_samples} antithetic samples"
    default.fit(X, y)  # load the shipped weights once (process cache)
    rows = [("fit 442 x 10 (default, no training)",
             timed(lambda: DiffusionICLRegressor().fit(X, y)))]
    rng = np.random.default_rng(0)
    Xc, yc, Xq = rng.standard_normal((20, 5)), rng.standard_normal(20), rng.standard_normal((100, 5))
    for label, kw in [(f"defaults ({settings})", {}),
                      ("DDPM-50, 64 independent samples (the previous defaults)",
                       dict(n_sampling_steps=50, n_samples=64, antithetic=False)),
                      ("DDIM-25, 64 samples", dict(sampler="ddim", n_sampling_steps=25, n_samples=64))]:
        reg = DiffusionICLRegressor(random_state=0, **kw).fit(Xc, yc)
        rows.append((f"predict 100 queries, 20 context, {label}",
                     timed(lambda: reg.predict(Xq))))
    reg = DiffusionICLRegressor(random_state=0).fit(X, y)
    rows.append((f"predict 442 diabetes queries, 442 context, defaults ({settings})",
                 timed(lambda: reg.predict(X))))
    print("| operation | median of 3, seconds |\n|---|---|")
    for label, sec in rows:
        print(f"| {label} | {sec:.2f} |")


if __name__ == "__main__":
    main()
