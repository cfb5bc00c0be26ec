"""curate: build and curate benchmarks of spurious correlations."""
__version__ = "0.1.0"
