"""Archives: export an experiment as a zip and import one as a new experiment."""
