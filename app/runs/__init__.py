"""Runs: one (activation, seed) arm of an experiment."""
