"""Data of shapes meta-training never saw: more than 10 features, more than 1,024 rows.

Wide data (``--widths``): Friedman 1 with extra noise features, and diabetes with 10
noise columns or with its 45 pairwise products; the model (its GP baseline fitted to
every feature, its transformer reading the 10 most relevant) next to its closed-form
features alone, the same model behind ``PCA(n_components=10)``, BayesianRidge, the ARD GP
and a random forest. Long data (``--rows``): Friedman 1 and 3 with thousands of rows,
where the baseline is fitted to 1,024 of them. 5-fold cross-validation, means over folds.

    python benchmarks/beyond_training.py --threads 1 --out benchmarks/results/beyond_training.md
"""

import argparse
import time

import numpy as np
import torch
from sklearn.datasets import load_diabetes, make_friedman1, make_friedman3
from sklearn.decomposition import PCA
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skdiffusion.bench.predictive import FEATURES_ALONE, features_alone
from skdiffusion.bench.real import fit_predict_quietly, methods, score

PEERS = ("BayesianRidge", "GP (ARD)", "random forest")


def wide_data(widths):
    """{name: (X, y)}: Friedman 1 at each width, diabetes + noise, diabetes + products."""
    out = {f"Friedman 1, d = {d}": make_friedman1(200, d, noise=1.0, random_state=0)
           for d in widths}
    X, y = load_diabetes(return_X_y=True)
    noise = np.random.default_rng(0).normal(size=(len(y), 10)) * X.std(0).mean()
    out["diabetes + 10 noise columns (d = 20)"] = np.c_[X, noise], y
    Z = StandardScaler().fit_transform(X)
    products = np.stack([Z[:, i] * Z[:, j] for i in range(10) for j in range(i + 1, 10)], 1)
    out["diabetes + 45 products (d = 55)"] = np.c_[X, products], y
    return out


def long_data(sizes):
    return {f"{name}, n = {n}": make(n_samples=n, noise=noise, random_state=0)
            for name, make, noise in (("Friedman 1", make_friedman1, 1.0),
                                      ("Friedman 3", make_friedman3, 0.1)) for n in sizes}


def all_methods(model):
    params = {"model": model}
    ours = methods(params)["skdiffusion"]

    def behind_pca(X, y, Xt):
        pre = make_pipeline(StandardScaler(), PCA(n_components=min(10, *X.shape))).fit(X)
        return ours(pre.transform(X), y, pre.transform(Xt))

    return {"skdiffusion": ours, FEATURES_ALONE: features_alone(params),
            "skdiffusion behind PCA(10)": behind_pca,
            **{name: f for name, f in methods(params).items() if name in PEERS}}


def table(data, chosen, n_splits):
    lines = ["| data | method | R^2 | CRPS | 90 % coverage | seconds |", "|---|---|---|---|---|---|"]
    for name, (X, y) in data.items():
        folds = list(KFold(n_splits, shuffle=True, random_state=0).split(X))
        for method, fit_predict in chosen.items():
            t0, sc = time.perf_counter(), []
            for train, test in folds:
                sc.append(score(y[test], *fit_predict_quietly(fit_predict, X[train], y[train],
                                                              X[test])))
            mean = {key: np.mean([s[key] for s in sc]) for key in ("r2", "crps", "cov90")}
            lines.append(f"| {name} | {method} | {mean['r2']:.3f} | {mean['crps']:.4g} | "
                         f"{mean['cov90']:.3f} | {time.perf_counter() - t0:.1f} |")
            print(lines[-1], flush=True)
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default", help="a shipped model's name or a model directory")
    ap.add_argument("--widths", default="20,40", help="Friedman 1 feature counts ('' for no wide section)")
    ap.add_argument("--rows", default="1500,3000", help="Friedman 1 / 3 sizes ('' for none)")
    ap.add_argument("--long-methods", default="skdiffusion",
                    help="methods of the long section (the ARD GP takes minutes there)")
    ap.add_argument("--methods", default=None, help="comma-separated subset of the methods")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=None, help="also write the tables to this markdown file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    every = all_methods(args.model)
    chosen = {k: v for k, v in every.items() if not args.methods or k in args.methods.split(",")}
    lines = ["# Data beyond meta-training's shapes", "",
             f"`python benchmarks/beyond_training.py --model {args.model} --widths {args.widths} "
             f"--rows '{args.rows}' --folds {args.folds}"
             + (f" --threads {args.threads}" if args.threads else "")
             + f"` (torch threads: {torch.get_num_threads()}; seconds: all folds)"]
    if args.widths:
        lines += ["", "## More than 10 features", ""]
        lines += table(wide_data([int(d) for d in args.widths.split(",")]), chosen, args.folds)
    if args.rows:
        long = {k: v for k, v in every.items() if k in args.long_methods.split(",")}
        lines += ["", "## More than 1,024 rows", ""]
        lines += table(long_data([int(n) for n in args.rows.split(",")]), long, args.folds)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
