"""Workspace views for other tools: ``export_fiftyone`` writes a folder the FiftyOne App browses.

>>> from curate.export import export_fiftyone, load_fiftyone
"""

from curate.export.fiftyone import ExportError, FiftyOneExport, export_fiftyone, load_fiftyone

__all__ = ["ExportError", "FiftyOneExport", "export_fiftyone", "load_fiftyone"]
