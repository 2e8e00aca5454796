"""Benchmarks, run as scripts (``python -m benchmarks.convert``); never imported by tests."""
