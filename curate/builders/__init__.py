"""Build: release tables from the workspace, one registered builder per kind of benchmark.

>>> sorted(BUILDERS)
['context-shift', 'focus', 'groups', 'logobank', 'mmspubench', 'spurious-only']
"""

from curate.builders import (  # noqa: F401  (registers the builders)
    context_shift,
    focus,
    groups,
    logobank,
    mmspubench,
    spurious_only,
)
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
