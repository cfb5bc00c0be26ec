"""Install, start and stop the Label Studio server the bridge and its tests use.

    python tools/label_studio.py install              # .label-studio/venv (its own venv, ~1 GB)
    python tools/label_studio.py start [DATA_DIR]     # 127.0.0.1, free port; prints URL, login, token
    python tools/label_studio.py stop [DATA_DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from annotation import server  # noqa: E402

DEFAULT_DATA = Path(".label-studio") / "data"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("install", "start", "stop", "status"))
    parser.add_argument("data_dir", nargs="?", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--venv", type=Path, default=server.DEFAULT_VENV)
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    try:
        if args.action == "install":
            print(f"label-studio {server.LABEL_STUDIO_VERSION} in {server.install(args.venv).parent.parent}")
        elif args.action == "start":
            running = server.start(args.data_dir, venv=args.venv, port=args.port)
            print(f"Label Studio at {running.url} (login {running.username} / {running.password}, "
                  f"token {running.token}, pid {running.pid})")
        elif args.action == "stop":
            server.stop(server.LabelStudioServer.load(args.data_dir))
            print("Label Studio stopped")
        else:
            running = server.LabelStudioServer.load(args.data_dir)
            print(f"{running.url}: {'answering' if server.is_ready(running.url, running.token) else 'not answering'}")
    except server.ServerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
