"""Runnable benchmarks: `.venv/bin/python -m benchmarks.NAME` prints a table from one run."""
