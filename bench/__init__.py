"""Benchmarks, not tests: ``python -m bench`` runs sift against rsync and Syncthing (see
docs/performance.md); ``python -m bench.chunk`` measures chunking throughput alone."""
