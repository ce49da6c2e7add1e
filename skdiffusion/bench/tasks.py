"""Synthetic regression tasks for the benchmarks, with the exact Bayes answer where one exists.

Inputs are x ~ N(0, I_d). The linear families keep their weights and noise so that the
exact posterior predictive (:func:`skdiffusion.evaluation.bayes_predictive`) can be
computed; the other families use the meta-training priors of :mod:`skdiffusion.priors`.
"""

from dataclasses import dataclass

import numpy as np
import torch

from ..evaluation import bayes_predictive
from ..priors import make_prior

FAMILIES = ("linear", "noisy_linear", "sparse_linear", "relu_net", "decision_tree")
LINEAR_NOISE = 0.1            # the noise of the "linear" family (and of the accuracy bars)
NOISY_RANGE = (0.01, 5.0)     # noisy_linear: noise std log-uniform here (the default prior's)

# Prompts unlike training, all on linear tasks with noise LINEAR_NOISE unless stated.
VARIANTS = {
    "none": {},
    "noise std 10 (prior: at most 5)": {"noise": 10.0},
    "x * 3": {"x_scale": 3.0},
    "x / 3": {"x_scale": 1 / 3},
    "y * 10": {"y_scale": 10.0},
    "d more, irrelevant features": {"irrelevant": True},
}


@dataclass
class Tasks:
    """n tasks of k context points and one query each (numpy float64).

    ``noise``, ``prior_std`` and ``relevant`` describe the linear-Gaussian model behind
    the data when there is one (``noise`` is None otherwise)."""
    X_ctx: np.ndarray   # (n, k, d)
    y_ctx: np.ndarray   # (n, k)
    X_q: np.ndarray     # (n, 1, d)
    y_q: np.ndarray     # (n, 1)
    noise: np.ndarray = None   # (n,) noise std per task
    prior_std: float = 1.0
    relevant: int = None       # only the first ``relevant`` features carry signal

    def __len__(self):
        return len(self.y_q)

    def bayes(self):
        """Exact posterior predictive (mean, std), each (n, 1); needs a linear family."""
        if self.noise is None:
            raise ValueError("no closed-form posterior for this family")
        r, s = self.relevant or self.X_q.shape[-1], self.prior_std
        out = [bayes_predictive(Xc[:, :r], yc / s, Xq[:, :r], sd / s)
               for Xc, yc, Xq, sd in zip(self.X_ctx, self.y_ctx, self.X_q, self.noise)]
        return s * np.array([o[0] for o in out]), s * np.array([o[1] for o in out])


def make_tasks(family, n_tasks, k, d, seed, variant="none"):
    """Draw :class:`Tasks` of ``family`` with d features and k context points."""
    opts = VARIANTS[variant]
    if opts and family != "linear":
        raise ValueError("variants are defined on the linear family")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_tasks, k + 1, d))
    if family in ("linear", "noisy_linear"):
        relevant = d - d // 2 if opts.get("irrelevant") else d
        w = rng.standard_normal((n_tasks, d))
        w[:, relevant:] = 0.0
        if family == "linear":
            noise = np.full(n_tasks, opts.get("noise", LINEAR_NOISE))
        else:
            noise = np.exp(rng.uniform(*np.log(NOISY_RANGE), n_tasks))
        y = np.einsum("tnd,td->tn", X, w) + noise[:, None] * rng.standard_normal(X.shape[:2])
        ys = opts.get("y_scale", 1.0)
        X, y = X * opts.get("x_scale", 1.0), y * ys
        extra = dict(noise=noise * ys, prior_std=ys, relevant=relevant if relevant < d else None)
    elif family in FAMILIES:
        g = torch.Generator().manual_seed(seed)
        y = make_prior(family).sample_y(torch.from_numpy(X).float(), g).double().numpy()
        extra = {}
    else:
        raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
    return Tasks(X[:, :k], y[:, :k], X[:, k:], y[:, k:], **extra)


def y_variance(family, d, seed=12345, n_tasks=20000):
    """Variance of y under ``family`` (the normalizer: error 1.0 = predicting the mean)."""
    return float(np.var(make_tasks(family, n_tasks, 0, d, seed).y_q))
