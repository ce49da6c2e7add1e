"""Side by side: the skdiffusion rows of two benchmark reports (their report.json files).

    python benchmarks/compare_reports.py benchmarks/results/prior_noisy_linear/report.json \
        benchmarks/results/prior_mixture/report.json --names noisy_linear mixture
"""

import argparse
import json

MODEL = "skdiffusion"


def model_rows(report, section, key):
    return {key(r): r for r in report[section] if r["method"] == MODEL}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs=2)
    p.add_argument("--names", nargs=2, default=["A", "B"])
    args = p.parse_args()
    a, b = (json.load(open(path)) for path in args.reports)
    na, nb = args.names

    def curve_key(r):
        return r["family"], r["d"], r["k"]

    ca, cb = model_rows(a, "curves", curve_key), model_rows(b, "curves", curve_key)
    print(f"| family | d | k | {na} | {nb} | best other method (in {na}'s report) |")
    print("|---|---|---|---|---|---|")
    for key, row in ca.items():
        others = [r for r in a["curves"] if curve_key(r) == key and r["method"] != MODEL]
        best = min(others, key=lambda r: r["nse"])
        print(f"| {key[0]} | {key[1]} | {key[2]} | {row['nse']:.3g} | {cb[key]['nse']:.3g} "
              f"| {best['nse']:.3g} ({best['method']}) |")

    ra, rb = (model_rows(r, "real", lambda r: r["dataset"]) for r in (a, b))
    print(f"\n| dataset | R^2 {na} | R^2 {nb} | CRPS {na} | CRPS {nb} | cov90 {na} | cov90 {nb} |")
    print("|---|---|---|---|---|---|---|")
    for d, x in ra.items():
        y = rb[d]
        print(f"| {d} | {x['r2']:.3f} | {y['r2']:.3f} | {x['crps']:.3g} | {y['crps']:.3g} "
              f"| {x['cov90']:.3f} | {y['cov90']:.3f} |")

    ka, kb = (model_rows(r, "calibration", lambda r: r["k"]) for r in (a, b))
    print(f"\n| calibration k | CRPS {na} | CRPS {nb} | cov90 {na} | cov90 {nb} |")
    print("|---|---|---|---|---|")
    for k, x in ka.items():
        print(f"| {k} | {x['crps']:.3g} | {kb[k]['crps']:.3g} | {x['cov90']:.3f} | {kb[k]['cov90']:.3f} |")


if __name__ == "__main__":
    main()
