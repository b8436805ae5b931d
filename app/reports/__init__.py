"""Server-rendered HTML: the dashboard of experiments and the report of one experiment."""
