"""Benchmarks of issue 7: `python -m bench.run` (all figures to bench/results.json and a table)."""
