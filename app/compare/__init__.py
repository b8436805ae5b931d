"""Comparing experiments: GET /v1/compare and its plot."""
