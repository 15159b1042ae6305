"""Benchmarks and evaluation runs."""
