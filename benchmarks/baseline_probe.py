"""How good is the denoiser's linear baseline alone, and would choosing its ridge penalty
by leave-one-out help? (No network: this is the untrained model's answer.)

For noisy and noise-0.1 linear tasks, each task standardized by its context as the
estimator does, prints the squared error / Var(y) of: the baseline mean the denoiser uses
with each ``ridge_penalty`` (fixed light ridge, or the evidence-maximizing penalty; both
shrunk at high leverage), the ridge among ``RIDGE_LAMBDAS`` with the lowest closed-form
leave-one-out error, scikit-learn's ``BayesianRidge`` without intercept on the same
standardized context, and exact Bayes.

    python benchmarks/baseline_probe.py
"""

import numpy as np
import torch
from sklearn.linear_model import BayesianRidge

from skdiffusion.bench.tasks import make_tasks, y_variance
from skdiffusion.denoiser import (
    LEVERAGE_CAPS,
    RIDGE_FLOOR,
    RIDGE_LAMBDAS,
    baseline_moments,
    ridge_features,
)
from skdiffusion.inference import standardize_tasks


def standardized(tasks):
    x, y, xq, ym, ys = standardize_tasks(*(torch.tensor(a) for a in (tasks.X_ctx, tasks.y_ctx, tasks.X_q)))
    return x, y, xq, ym.reshape(-1), ys.reshape(-1)


def loo_ridge(x, y, xq):
    """Prediction at xq of the ridge (penalty as in the denoiser) with least LOO error."""
    k, d = x.shape[1], x.shape[2]
    best, best_err = None, None
    for lam in RIDGE_LAMBDAS:
        A = x.transpose(1, 2) @ x + (lam * k + RIDGE_FLOOR) * torch.eye(d, dtype=x.dtype)
        Ainv = torch.linalg.inv(A)
        w = Ainv @ x.transpose(1, 2) @ y[..., None]
        h = ((x @ Ainv) * x).sum(-1)
        loo = (((y - (x @ w)[..., 0]) / (1 - h).clamp(min=1e-6)) ** 2).mean(1)
        pred = (xq @ w)[..., 0, 0]
        if best is None:
            best, best_err = pred, loo
        else:
            better = loo < best_err
            best, best_err = torch.where(better, pred, best), torch.where(better, loo, best_err)
    return best


def evidence_ridge(x, y, xq):
    return torch.tensor([BayesianRidge(fit_intercept=False).fit(a, b).predict(q)[0]
                         for a, b, q in zip(x.numpy(), y.numpy(), xq.numpy())])


def main():
    print("| family | d | k | baseline, fixed penalty | baseline, evidence penalty "
          "| LOO-selected ridge | BayesianRidge | Bayes |")
    print("|---|---|---|---|---|---|---|---|")
    for family in ("linear", "noisy_linear"):
        for d, ks in ((5, (3, 5, 7, 10, 12)), (10, (6, 10, 12, 20))):
            var = y_variance(family, d)
            for k in ks:
                t = make_tasks(family, 2000, k, d, seed=100 * d + k)
                x, y, xq, ym, ys = standardized(t)
                xa, ya = torch.cat([x, xq], 1), torch.cat([y, torch.zeros(len(y), 1, dtype=y.dtype)], 1)
                is_ctx = torch.zeros(ya.shape, dtype=torch.bool)
                is_ctx[:, :k] = True
                base = [(baseline_moments(ridge_features(xa, ya, is_ctx, penalty=p),
                                           LEVERAGE_CAPS[p], 10.0)[0][:, -1] * ys + ym).numpy()
                        for p in LEVERAGE_CAPS]
                loo = (loo_ridge(x, y, xq) * ys + ym).numpy()
                evidence = (evidence_ridge(x, y, xq) * ys + ym).numpy()
                yq = t.y_q[:, 0]
                err = [np.mean((p - yq) ** 2) / var for p in (*base, loo, evidence, t.bayes()[0][:, 0])]
                print(f"| {family} | {d} | {k} | " + " | ".join(f"{e:.3g}" for e in err) + " |")


if __name__ == "__main__":
    main()
