"""Service metadata: the catalog and the health checks."""
