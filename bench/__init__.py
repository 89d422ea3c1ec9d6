"""Vigil benchmarks: ``python -m bench`` (see bench/cli.py)."""
