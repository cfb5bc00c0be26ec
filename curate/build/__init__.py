"""Build: release tables from the workspace, one registered builder per kind of benchmark.

>>> sorted(BUILDERS)
['groups']
"""

from curate.build import groups  # noqa: F401  (registers the builder)
from curate.build.base import BUILDERS, Builder, BuildError, BuildResult, Release, build, make_builder, register_builder

__all__ = ["BUILDERS", "BuildError", "BuildResult", "Builder", "Release", "build", "make_builder", "register_builder"]
