"""sift: keep many machines byte-identical to one authoritative dataset."""

__version__ = "0.1.0"
