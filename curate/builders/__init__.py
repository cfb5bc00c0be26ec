"""Build: release tables from the workspace, one registered builder per kind of benchmark.

>>> sorted(BUILDERS)
['focus', 'groups', 'logobank', 'mmspubench', 'spurious-only']
"""

from curate.builders import focus, groups, logobank, mmspubench, spurious_only  # noqa: F401  (registers the builders)
from curate.builders.base import (
           BUILDERS,
           Builder,
           BuildError,
           BuildResult,
           Release,
           build,
           make_builder,
           register_builder,
)
from curate.builders.mmspubench import import_mmspubench, validate_item

__all__ = ["BUILDERS", "BuildError", "BuildResult", "Builder", "Release", "build", "import_mmspubench", "make_builder",
           "register_builder", "validate_item"]
