"""Benchmarks, not tests: run one as ``python -m bench.<name>`` (e.g. ``python -m bench.chunk``)."""
