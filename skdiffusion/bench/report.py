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
    for sampler in ("ddim", "ddpm"):
        rs = [r for r in rows if r["sampler"] == sampler]
        for ax, (key, _) in zip(axes, panels):
            ax.plot([r["ms_per_query"] for r in rs], [r[key] for r in rs], marker="o", label=sampler)
            for r in rs:
                label = f"S={r['steps']}" if sampler == "ddim" else f"n={r['n_samples']}"
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
