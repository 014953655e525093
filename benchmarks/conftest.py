"""Benchmarks run with pytest-benchmark: `python -m pytest benchmarks
--benchmark-only`. The same workloads as `python -m rlm_fast bench`."""
