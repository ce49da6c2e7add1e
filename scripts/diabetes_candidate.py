"""Diabetes R^2 and interval coverage of a trained model directory, measured as
``examples/quickstart.py`` measures the default: through the public estimator.

The directory's model is placed in a temporary cache under the key of
``DiffusionICLRegressor(**ESTIMATOR)``'s configuration, which must match the stored one
(so the numbers belong to that configuration), and training is forbidden.

    python scripts/diabetes_candidate.py runs/cap100_1500 \\
        --estimator '{"n_train_steps": 1500, "variance_cap": 100.0}'
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from sklearn.datasets import load_diabetes
from sklearn.model_selection import KFold, cross_val_score, train_test_split

from skdiffusion import DiffusionICLRegressor, pretrained
from skdiffusion.checkpoint import read_config


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="model directory (config.json + model.safetensors)")
    p.add_argument("--estimator", default="{}", help="JSON of DiffusionICLRegressor kwargs")
    args = p.parse_args()
    kw = json.loads(args.estimator)
    key = pretrained.spec_key(DiffusionICLRegressor(**kw).model_spec())
    if pretrained.spec_key(read_config(args.model)["config"]) != key:
        sys.exit(f"{args.model} was not trained with DiffusionICLRegressor(**{kw})'s configuration")
    os.environ["SKDIFFUSION_CACHE"] = cache = tempfile.mkdtemp()
    shutil.copytree(args.model, os.path.join(cache, key),
                    ignore=shutil.ignore_patterns("snapshots", "train_state.pt", "*.txt"))
    pretrained.pretrain = lambda *a, **k: sys.exit("would train: model not found in the cache")

    X, y = load_diabetes(return_X_y=True)
    t0 = time.time()
    scores = cross_val_score(DiffusionICLRegressor(random_state=0, **kw), X, y,
                             cv=KFold(5, shuffle=True, random_state=0))
    print(f"5-fold R^2 = {scores.mean():.3f} +- {scores.std():.3f} ({time.time() - t0:.1f} s)")
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, random_state=0)
    reg = DiffusionICLRegressor(random_state=0, **kw).fit(X_tr, y_tr)
    lo, _, hi = reg.predict_quantiles(X_te, quantiles=(0.05, 0.5, 0.95), n_samples=200).T
    print(f"held-out 90 % interval coverage: {np.mean((lo <= y_te) & (y_te <= hi)):.2f}")


if __name__ == "__main__":
    main()
