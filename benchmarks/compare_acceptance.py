"""One line per acceptance table (``benchmarks/acceptance.py`` output): whole-grid summaries
for choosing between models. The last two columns compare each table with the first, cell
by cell: the median and the largest ratio of its model / unknown-intercept Bayes to the
first table's (below 1 is better). A last line scores the first table's "prior's Bayes"
columns the same way: what a model trained to perfection on its prior would score.

    python benchmarks/compare_acceptance.py benchmarks/results/acceptance.md \
        benchmarks/results/acceptance_cap100_cpu1500.md
"""

import argparse
import math
import re
import statistics

RATIO, COVERAGE = "model / unknown-intercept Bayes", "90 % coverage"
PRIOR, FLOOR, PRIOR_COVERAGE = ("prior's Bayes / Bayes", "unknown-intercept Bayes / Bayes",
                                "prior's Bayes coverage")


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


def bar_met(path):
    """Cells meeting their bar, "N/M", from the table's summary line, which judged the
    unrounded ratios (the cells show two decimals)."""
    return re.search(r"accuracy bar met at (\d+/\d+)", open(path).read()).group(1)


def scores(ratios, cover):
    """(geometric mean of the ratios, coverage cells in [0.86, 0.94], mean abs(coverage - 0.9))."""
    geo = math.exp(sum(map(math.log, ratios)) / len(ratios))
    return geo, sum(0.86 <= c <= 0.94 for c in cover), sum(abs(c - 0.9) for c in cover) / len(cover)


def prior_line(rows):
    """The summary line of the prior's Bayes answer (rows of a table with its columns), its
    bar judged on the rounded cells."""
    ratios = [float(r[PRIOR]) / float(r[FLOOR]) for r in rows]
    geo, inside, off = scores(ratios, [float(r[PRIOR_COVERAGE]) for r in rows])
    barred = [r for r in rows if r["bar"] != "-"]
    met = sum(float(r[PRIOR]) <= float(r["bar"]) for r in barred)
    return (f"| prior's Bayes (first table's tasks) | {len(rows)} | {met}/{len(barred)} "
            f"| {geo:.2f} | {inside} | {off:.3f} | - | - |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tables", nargs="+")
    args = p.parse_args()
    print("| table | cells | bar met | geometric mean of model / unknown-intercept Bayes "
          "| coverage in [0.86, 0.94] | mean abs(coverage - 0.9) "
          "| median cell / first table's | worst cell / first table's |")
    print("|---|---|---|---|---|---|---|---|")
    first = table(args.tables[0])
    for path in args.tables:
        cells = table(path)
        rows = cells.values()
        ratios = [float(r[RATIO]) for r in rows]
        cover = [float(r[COVERAGE]) for r in rows]
        geo, inside, off = scores(ratios, cover)
        rel = [float(r[RATIO]) / float(first[key][RATIO]) for key, r in cells.items()
               if key in first]
        print(f"| {path} | {len(ratios)} | {bar_met(path)} | {geo:.2f} | {inside} "
              f"| {off:.3f} | {statistics.median(rel):.2f} | {max(rel):.2f} |")
    if first and PRIOR in next(iter(first.values())):
        print(prior_line(list(first.values())))


if __name__ == "__main__":
    main()
