"""Benchmark suite: in-context curves, robustness, calibration, samplers, real data.

Run ``python -m skdiffusion.bench [--quick]``; it prints every table and writes
``benchmarks/results/REPORT.md`` with its figures. Needs the ``bench`` extra
(matplotlib, scoringrules).
"""
