"""Ingest: sources -> Items in the workspace, with image checks and quarantine.

>>> sorted(SOURCES)
['folder', 'groups', 'hf', 'manifest', 'webdataset']
"""

from curate.ingest.base import SOURCES, Entry, IngestSource, SourceError, make_source, register_source
from curate.ingest.folder import FolderSource
from curate.ingest.groups import GroupTableSource
from curate.ingest.hf import HuggingFaceSource
from curate.ingest.manifest import ManifestSource
from curate.ingest.runner import IngestOptions, IngestResult, ingest
from curate.ingest.webdataset import WebDatasetSource

__all__ = [
    "SOURCES", "Entry", "FolderSource", "GroupTableSource", "HuggingFaceSource", "IngestOptions",
    "IngestResult", "IngestSource", "ManifestSource", "SourceError", "WebDatasetSource", "ingest",
    "make_source", "register_source",
]
