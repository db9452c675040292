"""Benchmarks: ``python -m bench [--quick] [--backend sqlite|postgresql] [--only SUBSTRING]``.

Every workload runs on fresh databases and is printed beside its target and, where one
applies, a reference ceiling measured in the same run (a bare INSERT-and-commit loop, a
bare claim-and-complete loop), so the ratios mean something on any machine. Figures are
printed, never asserted. See docs/benchmarks.md.
"""
