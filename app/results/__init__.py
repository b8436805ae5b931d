"""Results: cross-seed statistics, diagnostics, plots, exports and their endpoints."""
