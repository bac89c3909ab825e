"""Helpers shared by the tests and the benchmarks (never test modules themselves)."""
