"""curate: build and curate benchmarks of spurious correlations.

In a notebook::

    import curate
    project = curate.open("ws")            # or curate.init("ws")
    project.ingest("folder", "images/")
    project.propose("clip", model="clip-vit-b-32")
    project.items()                        # polars frames: items(), evidence(), verdicts()
"""

from curate.api import Project, init, open

__all__ = ["Project", "init", "open"]
__version__ = "0.1.0"
