"""90 % coverage of the denoiser's Gaussian baseline alone (no network: the untrained
model's interval, mean +- 1.645 s), on the acceptance grid's linear tasks (noise 0.1).

The baseline's variance is noise variance x (1 + leverage), the noise variance being the
context's residual sum of squares over k - sum(leverage) degrees of freedom. The context is
centred (standardized) first, as if an intercept had been fitted: the "centred" columns
count that (``fit_ridge(..., centred=True)``, the configuration field ``centred_dof``),
dividing by k - 1 - sum(leverage) and adding the intercept's 1 / k to the leverage. Shown
with the default variance cap of 10 and with 100. The shipped model's baseline is the
first column (its network was trained on it).

    python benchmarks/baseline_coverage.py
"""

import numpy as np
import torch

from skdiffusion.denoiser import (
    LEVERAGE_CAPS,
    baseline_moments,
    fit_ridge,
    pad_features,
    ridge_features_at,
)
from skdiffusion.evaluation import linear_tasks
from skdiffusion.inference import standardize_tasks

MAX_FEATURES = 10


def coverage(d, k, centred, variance_cap, n_tasks=2000):
    Xc, yc, Xq, yq = linear_tasks(n_tasks, k, 1, d, 0.1, seed=1000 * d + k)
    x, y, xq, y_mean, y_scale = standardize_tasks(*(torch.tensor(a) for a in (Xc, yc, Xq)))
    x, xq = pad_features(x, MAX_FEATURES), pad_features(xq, MAX_FEATURES)
    fit = fit_ridge(x, y, torch.ones(y.shape, dtype=torch.bool), centred=centred)
    features = ridge_features_at(fit, xq)
    m, s2 = baseline_moments(features, LEVERAGE_CAPS["fixed"], variance_cap)
    err = (m * y_scale[..., 0] + y_mean[..., 0]).numpy() - yq
    return np.mean(np.abs(err) <= 1.645 * (s2.sqrt() * y_scale[..., 0]).numpy())


def main():
    print("`python benchmarks/baseline_coverage.py`: 2,000 tasks x 1 query per (d, k)\n")
    print("| d | k | as now, cap 10 | centred, cap 10 | as now, cap 100 | centred, cap 100 |")
    print("|---|---|---|---|---|---|")
    columns = []
    for d in (2, 5, 10):
        for k in sorted({1, 2, 3, d, d + 1, d + 2, d + 3, 2 * d, 20, 40}):  # acceptance.py's
            cells = [coverage(d, k, centred, cap) for cap in (10.0, 100.0)
                     for centred in (False, True)]
            columns.append(cells)
            print(f"| {d} | {k} | " + " | ".join(f"{c:.3f}" for c in cells) + " |", flush=True)
    inside = [sum(0.86 <= c <= 0.94 for c in col) for col in zip(*columns)]
    print(f"| in [0.86, 0.94] | of {len(columns)} | " + " | ".join(map(str, inside)) + " |")


if __name__ == "__main__":
    main()
