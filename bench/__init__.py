"""Benchmarks: each module's `run()` returns a markdown section of side-by-side ratios."""
