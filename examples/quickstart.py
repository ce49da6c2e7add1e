"""Quickstart on a real dataset: diabetes (442 patients, 10 features), shipped with scikit-learn.

Cross-validated R^2 of DiffusionICLRegressor next to BayesianRidge and a Gaussian process,
then 90 % predictive intervals on a held-out split, saved to quickstart_intervals.png.

    python examples/quickstart.py
"""

import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_diabetes  # noqa: E402
from sklearn.gaussian_process import GaussianProcessRegressor  # noqa: E402
from sklearn.gaussian_process.kernels import RBF, WhiteKernel  # noqa: E402
from sklearn.linear_model import BayesianRidge  # noqa: E402
from sklearn.model_selection import KFold, cross_val_score, train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from skdiffusion import DiffusionICLRegressor  # noqa: E402

X, y = load_diabetes(return_X_y=True)
cv = KFold(5, shuffle=True, random_state=0)
models = {
    "DiffusionICLRegressor": DiffusionICLRegressor(random_state=0),
    "BayesianRidge": BayesianRidge(),
    "GaussianProcess (RBF + white)": make_pipeline(
        StandardScaler(), GaussianProcessRegressor(RBF(3.0) + WhiteKernel(), normalize_y=True)),
}
print(f"diabetes: {X.shape[0]} samples, {X.shape[1]} features; 5-fold cross-validated R^2")
for name, model in models.items():
    t0 = time.time()
    scores = cross_val_score(model, X, y, cv=cv)
    print(f"  {name:32s} R^2 = {scores.mean():.3f} +- {scores.std():.3f}  ({time.time() - t0:.1f} s)")

X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, random_state=0)
reg = DiffusionICLRegressor(random_state=0).fit(X_tr, y_tr)
# tail quantiles need more samples than the mean does (see predict_quantiles)
lo, med, hi = reg.predict_quantiles(X_te, quantiles=(0.05, 0.5, 0.95), n_samples=200).T
print(f"held-out 90% interval coverage: {np.mean((lo <= y_te) & (y_te <= hi)):.2f}")

order = np.argsort(med)
plt.figure(figsize=(8, 4))
plt.fill_between(np.arange(len(order)), lo[order], hi[order], alpha=0.3, label="90% interval")
plt.plot(med[order], label="median prediction")
plt.scatter(np.arange(len(order)), y_te[order], s=8, color="k", label="observed")
plt.xlabel("held-out patients (sorted by prediction)")
plt.ylabel("disease progression")
plt.legend()
plt.tight_layout()
plt.savefig("quickstart_intervals.png", dpi=110)
print("wrote quickstart_intervals.png")
