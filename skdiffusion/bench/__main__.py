"""python -m skdiffusion.bench [--quick] [--params JSON] [--out DIR] [--render]

Runs every benchmark against the denoiser of ``DiffusionICLRegressor(**params)`` (the
shipped default unless ``--params`` says otherwise), prints the tables and writes
``REPORT.md``, ``report.json`` and the figures to ``--out``.
"""

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

from . import predictive, real, report, synthetic
from .model import BenchModel
from .tasks import FAMILIES, VARIANTS

DEFAULT_OUT = os.path.join("benchmarks", "results")


@dataclass
class Sizes:
    """How much of everything to run (full mode by default)."""
    families: tuple = FAMILIES
    ds: tuple = (5, 10)
    k_grid: dict = field(default_factory=lambda: {5: (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12),
                                                  10: (0, 1, 2, 4, 6, 8, 10, 12, 14, 16, 20)})
    tasks: int = 1000
    samples: int = 16
    variants: tuple = tuple(VARIANTS)
    robust_tasks: int = 500
    calibration_ks: tuple = (2, 5, 10, 20)
    calibration_tasks: int = 500
    calibration_samples: int = 64
    sampler_tasks: int = 500
    ddim_steps: tuple = (5, 10, 25, 50, 100)
    ddpm_steps: tuple = (8, 12, 16, 25, 50)
    sample_counts: tuple = (4, 8, 16, 32, 64)
    datasets: tuple = tuple(real.DATASETS)
    real_sizes: tuple = (100, 200, 500)  # rows of the sized data sets (None: default size)
    predictive_families: tuple = predictive.FAMILIES
    predictive_ds: tuple = (1, 3, 5)
    predictive_ks: tuple = (10, 30, 100)
    predictive_tasks: int = 8
    predictive_queries: int = 25

    def ks(self, d):
        return self.k_grid[d]

    @classmethod
    def quick(cls):
        return cls(ds=(5,), k_grid={5: (0, 2, 5, 7, 10)}, tasks=200, robust_tasks=100,
                   variants=("none", "x * 3", "y * 10"), calibration_ks=(5, 10),
                   calibration_tasks=100, calibration_samples=32, sampler_tasks=100,
                   ddim_steps=(5, 25), ddpm_steps=(16, 50), sample_counts=(8, 32),
                   datasets=("diabetes", "friedman1"), real_sizes=(None,),
                   predictive_families=("gp", "bimodal"), predictive_ds=(3,),
                   predictive_ks=(10, 100), predictive_tasks=6)


# the sizes that each section's model-independent rows (baselines, peers) depend on
REUSABLE = {"curves": ("families", "ds", "k_grid", "tasks"),
            "predictive": ("predictive_families", "predictive_ds", "predictive_ks",
                           "predictive_tasks", "predictive_queries"),
            "real": ("datasets", "real_sizes")}


def baseline_rows(report_path, sizes):
    """{section: rows} of an earlier ``report.json``, for each section whose sizes were
    the same as now (a section it does not have, or ran at other sizes, is refitted)."""
    with open(report_path) as f:
        old = json.load(f)
    new = json.loads(json.dumps(asdict(sizes)))
    out = {sec: old.get(sec, ()) for sec, fields in REUSABLE.items()
           if all(old["sizes"].get(f) == new[f] for f in fields)}
    if "curves" not in out:
        raise ValueError(f"{report_path} was run with other sizes; its baselines do not apply")
    return out


def run(params=None, sizes=None, out=DEFAULT_OUT, command=None, log=print, progress=False,
        reuse=None):
    """Run all benchmarks, write the report to ``out`` and return its Markdown text.

    ``reuse``: path of an earlier ``report.json`` with the same sizes whose in-context
    curve baselines, predictive peers and real-data peers are taken over instead of
    refitted (they do not depend on the model)."""
    sizes = sizes or Sizes()
    model = BenchModel(params)
    old = baseline_rows(reuse, sizes) if reuse else {}
    sections, timing = {}, {}
    d = sizes.ds[0]  # robustness, calibration and samplers use the first d
    jobs = [("curves", lambda: synthetic.curves(model, sizes, sizes.families, progress,
                                                old.get("curves", ()))),
            ("robustness", lambda: synthetic.robustness(model, sizes, sizes.variants, d, progress)),
            ("calibration", lambda: synthetic.calibration(model, sizes, d)),
            ("samplers", lambda: synthetic.samplers(model, sizes, d)),
            ("predictive", lambda: predictive.compare(
                model.estimator_params, sizes.predictive_families, sizes.predictive_ds,
                sizes.predictive_ks, sizes.predictive_tasks, sizes.predictive_queries, progress,
                reuse=old.get("predictive", ()))),
            ("real", lambda: real.cross_validate(model.estimator_params, sizes.datasets,
                                                 sizes=sizes.real_sizes,
                                                 reuse=old.get("real", ())))]
    for name, job in jobs:
        t0 = time.perf_counter()
        sections[name] = job()
        timing[name] = time.perf_counter() - t0
        log(f"[bench] {name}: {timing[name]:.0f} s")
    result = {"command": command, "model": model.key, "params": model.params,
              "sampler": model.sampler_kw["sampler"], "sizes": asdict(sizes),
              "seconds": timing, **sections}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(result, f, indent=1)
    return report.write_report(result, out)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m skdiffusion.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes: a few minutes on 2 CPU cores")
    p.add_argument("--params", default="{}",
                   help="JSON dict of DiffusionICLRegressor parameters (default: the defaults)")
    p.add_argument("--out", default=DEFAULT_OUT, help="output directory")
    p.add_argument("--reuse-baselines", metavar="REPORT_JSON",
                   help="take the in-context curves' baselines from this earlier report "
                        "(same sizes) instead of refitting them (they do not depend on the "
                        "model)")
    p.add_argument("--render", action="store_true",
                   help="only redraw REPORT.md and the figures from OUT/report.json")
    args = p.parse_args(argv)
    if args.render:
        with open(os.path.join(args.out, "report.json")) as f:
            return print(report.write_report(json.load(f), args.out))
    command = "python -m skdiffusion.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    print(run(json.loads(args.params), Sizes.quick() if args.quick else Sizes(), args.out,
              command.strip(), progress=True, reuse=args.reuse_baselines))


if __name__ == "__main__":
    main()
