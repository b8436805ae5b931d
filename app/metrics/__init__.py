"""Per-epoch and per-layer metric tables of an experiment."""
