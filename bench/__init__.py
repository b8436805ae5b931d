"""Benchmarks that print wall-time ratios (not tests)."""
