"""Experiments: submission, listing, status and cancel."""
