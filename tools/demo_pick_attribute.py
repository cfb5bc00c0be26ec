"""For `make demo`: the verified attribute that splits the most classes (some images with it, some
without), as `--set` options for `curate build groups`, one word a line. With random weights and simulated people the
verdicts are arbitrary, so the demo asks the data instead of naming an attribute in advance."""

from __future__ import annotations

import sys
from collections import defaultdict

from curate.verdicts import PRESENT, resolved_verdicts
from curate.workspace import Workspace

workspace, round_name = Workspace.open(sys.argv[1]), sys.argv[2]
labels = {item.item_id: item.label for item in workspace.catalog.items()}
seen: dict[str, dict[str, set[bool]]] = defaultdict(lambda: defaultdict(set))
for verdict in resolved_verdicts(workspace, round_name):
    seen[verdict.attribute][str(labels[verdict.item_id])].add(verdict.value in PRESENT)
split = {attribute: sorted(c for c, values in by_class.items() if len(values) == 2)
         for attribute, by_class in seen.items()}
attribute = max(sorted(split), key=lambda a: len(split[a]))
if len(split[attribute]) < 2:
    sys.exit(f"no attribute of round {round_name} is both present and absent in two classes")
print("\n".join(("--set", f"attribute={attribute}", "--set", f"classes={','.join(split[attribute])}")))
