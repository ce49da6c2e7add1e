"""One fitted model, many tasks: predict several synthetic regression problems through
``context=`` without refitting anything.

    python examples/in_context_tasks.py
"""

import numpy as np

from skdiffusion import DiffusionICLRegressor

rng = np.random.default_rng(0)


def task(d, n, noise, scale, offset):
    X = rng.standard_normal((n, d))
    y = scale * (X @ rng.standard_normal(d) + noise * rng.standard_normal(n)) + offset
    return X, y


X0, y0 = task(4, 60, 0.1, 1.0, 0.0)
reg = DiffusionICLRegressor(n_samples=32, random_state=0).fit(X0, y0)

print(f"{'task':38s} {'k':>4s} {'R^2':>6s} {'90% cover':>9s}")
for d, k, noise, scale, offset in [(2, 10, 0.1, 1.0, 0.0), (5, 30, 0.3, 100.0, 50.0),
                                   (8, 40, 0.05, 0.01, -3.0), (10, 120, 1.0, 5.0, 0.0)]:
    X, y = task(d, k + 100, noise, scale, offset)
    samples = reg.sample(X[k:], context=(X[:k], y[:k]))   # (100, n_samples)
    pred = samples.mean(axis=1)
    lo, hi = np.quantile(samples, [0.05, 0.95], axis=1)
    r2 = 1 - np.mean((pred - y[k:]) ** 2) / np.var(y[k:])
    cover = np.mean((lo <= y[k:]) & (y[k:] <= hi))
    label = f"linear d={d} noise={noise} y*{scale}+{offset}"
    print(f"{label:38s} {k:4d} {r2:6.3f} {cover:9.2f}")
