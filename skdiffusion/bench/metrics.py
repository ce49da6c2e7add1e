"""Scores for point and probabilistic predictions, and bootstrap bands.

CRPS comes from ``scoringrules`` (the "fair" ensemble estimator, unbiased for the
sampler's own distribution whatever the ensemble size, and the closed form for Gaussians).
Intervals are central Gaussian intervals mean +- z std for every method, so that the
methods are compared on the same footing (with 16-64 samples, empirical 5 %/95 %
quantiles are too noisy).
"""

import numpy as np
import scoringrules

from ..evaluation import coverage

LEVELS = (0.5, 0.8, 0.9, 0.95)
RELIABILITY_LEVELS = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2))


def mc_corrected_sq_error(samples, y):
    """(mean - y)^2 - var / n per query: unbiased for the squared error of the sampler's
    exact mean, i.e. with the Monte Carlo error of averaging n samples removed."""
    n = samples.shape[-1]
    var = samples.var(-1, ddof=1) if n > 1 else np.zeros(samples.shape[:-1])
    return (samples.mean(-1) - y) ** 2 - var / n


def bootstrap_band(values, level=0.9, n_boot=1000, seed=0):
    """Percentile bootstrap interval of the mean of ``values`` (resampling tasks)."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(1)
    return tuple(np.quantile(means, [(1 - level) / 2, (1 + level) / 2]))


def probabilistic_scores(y, mean, std, samples=None, levels=LEVELS):
    """{crps, nll, mse, cov50, ...}: CRPS of the samples if given, else of N(mean, std^2);
    Gaussian NLL of (mean, std)."""
    y, mean, std = (np.ravel(a) for a in (y, mean, std))
    std = np.maximum(std, 1e-12)
    if samples is not None:
        crps = scoringrules.crps_ensemble(y, samples.reshape(len(y), -1), estimator="fair")
    else:
        crps = scoringrules.crps_normal(y, mean, std)
    nll = 0.5 * np.log(2 * np.pi * std**2) + 0.5 * ((y - mean) / std) ** 2
    out = {"crps": float(np.mean(crps)), "nll": float(np.mean(nll)),
           "mse": float(np.mean((y - mean) ** 2))}
    out.update({f"cov{round(100 * lv)}": coverage(y, mean, std, lv) for lv in levels})
    return out


def reliability(y, mean, std, levels=RELIABILITY_LEVELS):
    """Observed coverage of each nominal central-interval level."""
    return [coverage(np.ravel(y), np.ravel(mean), np.ravel(std), lv) for lv in levels]
