"""Live Celery workers as the database sees them (the worker_nodes table)."""
