"""Install Label Studio in a venv of its own, with the migrated data template new workspaces copy.

    python tools/label_studio.py install              # .label-studio/venv (~1 GB) and its template
    python tools/label_studio.py install --venv DIR   # elsewhere (then set CURATE_LABEL_STUDIO_VENV=DIR)

Servers are per workspace: `curate annotate serve -w ws` / `curate annotate stop -w ws`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from annotation import server  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("install",))
    parser.add_argument("--venv", type=Path, default=server.REPOSITORY_VENV)
    args = parser.parse_args()
    try:
        command = server.install(args.venv.resolve())
    except server.ServerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"label-studio {server.LABEL_STUDIO_VERSION} in {command.parent.parent} "
          f"(data template {server.template(command.parent.parent)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
