"""Benchmarks for mesh: `python bench/run.py --list`."""
