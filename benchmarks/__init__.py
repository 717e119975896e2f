"""Benchmark scripts that print their figures (docs/benchmarks.md); not in the package."""
