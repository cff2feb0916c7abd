"""Benchmarks of nodegate on the lab (speed of reads, checks and the procedure): `python -m bench.run` (all figures to bench/results.json and a table)."""
