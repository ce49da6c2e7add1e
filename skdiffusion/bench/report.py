"""Markdown tables and matplotlib figures for the benchmark rows."""

import os

import numpy as np

from .synthetic import MODEL


def _fmt(v, digits=3):
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:.0f}"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _methods(rows):
    return list(dict.fromkeys(r["method"] for r in rows))


def error_table(rows, key):
    """Rows sharing ``key`` values (e.g. k) as table rows, methods as columns; the model's
    column carries its bootstrap band."""
    methods = _methods(rows)
    cells = {}
    for r in rows:
        text = f"{r['nse']:.3g} [{r['lo']:.3g}, {r['hi']:.3g}]" if r["method"] == MODEL else r["nse"]
        cells.setdefault(r[key], {})[r["method"]] = text
    return table([key] + methods, [[k] + [c.get(m) for m in methods] for k, c in cells.items()])


def _ratio(row):
    return f"{row['crps_vs_gp']:.3g} [{row['lo']:.3g}, {row['hi']:.3g}]"


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _error_axis(ax, rows, title):
    for method in _methods(rows):
        rs = [r for r in rows if r["method"] == method]
        ks = [r["k"] for r in rs]
        style = dict(lw=2.5, color="k", zorder=5) if method == MODEL else dict(lw=1.2)
        if method == "Bayes":
            style = dict(lw=1.5, color="gray", ls="--")
        ax.plot(ks, [r["nse"] for r in rs], marker="o", ms=3, label=method, **style)
        ax.fill_between(ks, [r["lo"] for r in rs], [r["hi"] for r in rs], alpha=0.2,
                        color=style.get("color"))
    ax.set(yscale="log", xlabel="context size k", ylabel="squared error / Var(y)", title=title)
    ax.axhline(1.0, color="gray", lw=0.5)


def plot_curves(rows, family, path):
    plt = _plt()
    ds = sorted({r["d"] for r in rows if r["family"] == family})
    fig, axes = plt.subplots(1, len(ds), figsize=(5.5 * len(ds), 4), squeeze=False)
    for ax, d in zip(axes[0], ds):
        _error_axis(ax, [r for r in rows if r["family"] == family and r["d"] == d],
                    f"{family}, d = {d}")
    axes[0][0].legend(fontsize=8)
    _save(fig, path)


def plot_robustness(rows, path):
    plt = _plt()
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    cols = min(3, len(variants))
    nrow = -(-len(variants) // cols)
    fig, axes = plt.subplots(nrow, cols, figsize=(5 * cols, 3.6 * nrow), squeeze=False)
    for ax, v in zip(axes.flat, variants):
        _error_axis(ax, [r for r in rows if r["variant"] == v], v)
    for ax in list(axes.flat)[len(variants):]:
        ax.axis("off")
    axes[0][0].legend(fontsize=8)
    _save(fig, path)


def plot_reliability(rows, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for r in rows:
        if r["k"] == "all":
            ax.plot(r["levels"], r["reliability"], marker="o", ms=3, label=r["method"])
    ax.plot([0, 1], [0, 1], color="gray", lw=0.8, ls="--")
    ax.set(xlabel="nominal central-interval level", ylabel="observed coverage",
           title="Reliability (linear tasks, pooled k)")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_samplers(rows, path):
    plt = _plt()
    from matplotlib.ticker import NullFormatter, ScalarFormatter
    panels = [("crps", "CRPS"), ("nse_raw", "squared error of the n-sample mean / Var(y)"),
              ("cov90", "coverage of the 90 % interval")]
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4))
    for series in dict.fromkeys(r["series"] for r in rows):
        rs = [r for r in rows if r["series"] == series]
        by_steps = series in ("DDIM", "DDPM")
        for ax, (key, _) in zip(axes, panels):
            ax.plot([r["ms_per_query"] for r in rs], [r[key] for r in rs], marker="o", label=series)
            for r in rs:
                label = f"S={r['steps']}" if by_steps else f"n={r['n_samples']}"
                ax.annotate(label, (r["ms_per_query"], r[key]), fontsize=7)
    for ax, (_, ylabel) in zip(axes, panels):
        ax.set(xscale="log", xlabel="ms per query (batched, this machine)", ylabel=ylabel)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    axes[2].axhline(0.9, color="gray", lw=0.8, ls="--")
    axes[0].legend()
    _save(fig, path)


def _save(fig, path):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)


def write_report(result, out):
    """Figures and REPORT.md from the rows of :func:`run` (as saved in report.json)."""
    sizes, timing, sections = result["sizes"], result["seconds"], result

    def fig(name):
        return os.path.join(out, name)

    for family in sizes["families"]:
        plot_curves(sections["curves"], family, fig(f"curves_{family}.png"))
    plot_robustness(sections["robustness"], fig("robustness.png"))
    plot_reliability(sections["calibration"], fig("reliability.png"))
    plot_samplers(sections["samplers"], fig("samplers.png"))
    parts = [f"# skdiffusion benchmark report\n\nGenerated by `{result['command']}` "
             f"({sum(timing.values()) / 60:.1f} min on this machine). Model: the denoiser of "
             f"`DiffusionICLRegressor(**{result['params']})` (spec key `{result['model']}`, "
             f"sampler {result['sampler']}). Every number below is in `report.json`.\n"]
    parts.append(CURVES_INTRO.format(tasks=sizes["tasks"], samples=sizes["samples"]))
    for family in sizes["families"]:
        for d in sizes["ds"]:
            rows = [r for r in sections["curves"] if r["family"] == family and r["d"] == d]
            parts.append(f"### {family}, d = {d}\n\n{error_table(rows, 'k')}\n")
        parts.append(f"![{family}](curves_{family}.png)\n")
    parts.append(ROBUST_INTRO.format(tasks=sizes["robust_tasks"], d=sizes["ds"][0]))
    for v in sizes["variants"]:
        rows = [r for r in sections["robustness"] if r["variant"] == v]
        parts.append(f"### {v}\n\n{error_table(rows, 'k')}\n")
    parts.append("![robustness](robustness.png)\n")
    cal = sections["calibration"]
    keys = ["crps", "nll", "mse", "cov50", "cov80", "cov90", "cov95"]
    parts.append(CAL_INTRO.format(d=sizes["ds"][0], tasks=sizes["calibration_tasks"],
                                  ks=tuple(sizes["calibration_ks"]),
                                  samples=sizes["calibration_samples"]))
    parts.append(table(["k", "method"] + keys,
                       [[r["k"], r["method"]] + [r[x] for x in keys] for r in cal]) + "\n")
    parts.append("![reliability](reliability.png)\n")
    skeys = ["sampler", "steps", "n_samples", "antithetic", "nse", "nse_raw", "crps", "cov90",
             "ms_per_query"]
    parts.append(SAMPLER_INTRO.format(tasks=sizes["sampler_tasks"], d=sizes["ds"][0]))
    parts.append(table(skeys, [[r[x] for x in skeys] for r in sections["samplers"]]) + "\n")
    parts.append("![samplers](samplers.png)\n")
    if "predictive" in sections:
        pkeys = ["method", "crps", "crps_vs_gp", "nll", "cov90", "nse", "seconds"]
        parts.append(PREDICTIVE_INTRO.format(tasks=sizes["predictive_tasks"],
                                             queries=sizes["predictive_queries"]))
        for family in sizes["predictive_families"]:
            rows = [r for r in sections["predictive"] if r["family"] == family]
            cells = [[r["d"], r["k"]] + [_ratio(r) if x == "crps_vs_gp" else r[x] for x in pkeys]
                     for r in rows]
            parts.append(f"### {family}\n\n{table(['d', 'k'] + pkeys, cells)}\n")
    rkeys = ["dataset", "n", "d", "method", "r2", "r2_std", "rmse", "crps", "nll", "cov90",
             "seconds"]
    parts.append(REAL_INTRO)
    parts.append(table(rkeys, [[r[x] for x in rkeys] for r in sections["real"]]) + "\n")
    text = "\n".join(parts)
    with open(os.path.join(out, "REPORT.md"), "w") as f:
        f.write(text)
    return text


CURVES_INTRO = """## In-context curves

Squared error of the prediction at one query per task, divided by Var(y) of the family
(1.0 = predicting the mean), against the number of context points k; {tasks} tasks per
point; model band: percentile bootstrap 90 % over tasks. The model's error is that of its
exact sampling mean: the mean of {samples} samples, with the Monte Carlo term (sample
variance / n) subtracted. Bayes = exact posterior mean with the true noise (known sigma:
a lower bound for noisy_linear, where sigma varies per task). Baselines are fitted on each
task's context only. Families: linear (noise 0.1), noisy_linear (noise std log-uniform in
[0.01, 5]), sparse_linear (3 non-zero weights), relu_net (100 hidden units), decision_tree
(depth 4); see `skdiffusion/bench/tasks.py`. The shipped default was meta-trained on the
`functions` prior (GP draws, random MLPs, step functions, additive and linear functions);
`"linear"` on noisy_linear tasks only, for which the last three are out of distribution.
"""

ROBUST_INTRO = """## Robustness: prompts unlike training

Linear tasks (d = {d}, noise 0.1) transformed as named; {tasks} tasks per point. Bayes
knows the transformation (and, with irrelevant features, which {d} of the 2d matter, with
the first-d-dimensional prior).
"""

CAL_INTRO = """## Calibration

Linear tasks (d = {d}, noise 0.1), {tasks} tasks per k in {ks}; skdiffusion with {samples}
samples. CRPS: `scoringrules` (fair ensemble estimator for samples, closed form for the
Gaussian methods). NLL: Gaussian with the method's mean and std. Coverage: central
interval mean +- z std. Reliability diagram: pooled over k.
"""

SAMPLER_INTRO = """## Samplers: quality against time

Linear tasks (d = {d}, k = 10, noise 0.1), {tasks} tasks. nse: squared error of the exact
sampling mean / Var(y) (Monte Carlo term removed); nse_raw: of the n-sample mean as a user
gets it. Steps above the model's T are skipped; DDPM with fewer steps strides over the
schedule. Antithetic rows draw their noise in pairs (e, -e), as the estimator does by
default; nse's Monte Carlo correction and the fair CRPS assume independent samples, so
those rows show only nse_raw and coverage (every other section samples independently).
Times: float32,
all tasks in one batch, this machine (the estimator runs float64, about 2x slower).
"""

PREDICTIVE_INTRO = """## Predictive distributions on nonlinear families

f: a draw of the `functions` prior's GP family (random RBF / Matern-5/2 kernels,
per-feature lengthscales from its Gamma hyperprior, sometimes plus a linear kernel,
irrelevant features), unit variance per task; noise at a scale log-uniform in [0.01, 1]:
Gaussian (gp), heteroscedastic, Student t (heavy-tailed) or bimodal (f +- a gap of
0.5-2); x ~ N(0, I_d). {tasks} tasks per cell, {queries} queries each; every method is
fitted to each task's k context points alone. crps_vs_gp: mean CRPS / the ARD GP's on the
same tasks, paired bootstrap 90 % band over tasks. NLL: Gaussian with the method's mean
and std. nse: squared error / Var(y). seconds: per task (fit and predict). features
alone: the baseline the model's network corrects (the in-context GP model average: a
Gaussian, or a mixture of Gaussians where the prior's bimodal draws fit; scored from 1,000
draws of it there), the ablation of everything meta-training learned. NGBoost: library
defaults (500 trees).
"""

REAL_INTRO = """## Real and classic datasets

5-fold cross-validation (shuffled, seed 0); means over folds. skdiffusion: default
settings, predictions = mean of its samples; GP (ARD): RBF with one lengthscale per
feature plus white noise, type-II maximum likelihood with 3 seeded restarts; random
forest: the trees as an ensemble; NGBoost: library defaults; 5-NN has no predictive
distribution (CRPS = absolute error, no NLL). Friedman data: noise 1.0 / 110 / 0.1
(about 3:1 signal to noise), 200 points unless n says otherwise; diabetes at n < 442:
rows drawn without replacement (seed 0).
"""
