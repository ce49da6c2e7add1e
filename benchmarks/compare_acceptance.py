"""One line per acceptance table (``benchmarks/acceptance.py`` output): whole-grid summaries
for choosing between models.

    python benchmarks/compare_acceptance.py benchmarks/results/acceptance.md \
        benchmarks/results/acceptance_cap100_cpu1500.md
"""

import argparse
import math

RATIO, COVERAGE = "model / unknown-intercept Bayes", "90 % coverage"


def table(path):
    """{(d, k): {column: value}} from the markdown table in ``path``."""
    rows, header = {}, None
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:2] == ["d", "k"]:
            header = cells
        elif header and len(cells) == len(header) and cells[0].isdigit():
            rows[int(cells[0]), int(cells[1])] = dict(zip(header, cells))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tables", nargs="+")
    args = p.parse_args()
    print("| table | cells | geometric mean of model / unknown-intercept Bayes "
          "| coverage in [0.86, 0.94] | mean abs(coverage - 0.9) |")
    print("|---|---|---|---|---|")
    for path in args.tables:
        rows = table(path).values()
        ratios = [float(r[RATIO]) for r in rows]
        cover = [float(r[COVERAGE]) for r in rows]
        geo = math.exp(sum(map(math.log, ratios)) / len(ratios))
        inside = sum(0.86 <= c <= 0.94 for c in cover)
        off = sum(abs(c - 0.9) for c in cover) / len(cover)
        print(f"| {path} | {len(ratios)} | {geo:.2f} | {inside} | {off:.3f} |")


if __name__ == "__main__":
    main()
