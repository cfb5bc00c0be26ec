#!/usr/bin/env bash
# `make demo`: the road so far, on the bundled sample images (tools/demo_data), in ./demo-workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 YOLO_CONFIG_DIR="$PWD/.demo-ultralytics"
curate() { .venv/bin/curate "$@"; }
WS=demo-workspace
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

rm -rf "$WS"
step "1. a workspace"
curate init "$WS"
step "2. ingest: a class folder (one file is truncated on purpose and gets quarantined)"
curate ingest folder tools/demo_data/images -w "$WS"
step "   the same images through a manifest with a licence column: duplicates, no new items"
curate ingest manifest tools/demo_data/manifest.csv --license-column licence -w "$WS"
step "   a Waterbirds-style group table (y = cat/rocket, a = indoor/outdoor)"
curate ingest groups tools/demo_data/groups.csv --y-names cat,rocket --a-names indoor,outdoor -w "$WS"
step "   ingest the folder again: nothing changes"
curate ingest folder tools/demo_data/images -w "$WS"
step "3. propose: built-in candidate cues per taxonomy type, then CLIP and YOLO-World in one pass"
echo "(random weights: this machine cannot download real ones; put them where \`curate models\` says and drop --set ...weights=random)"
curate propose priors --set types=Background -w "$WS"
curate propose clip+detector --set clip_weights=random --set detector_weights=random --set imgsz=320 -w "$WS"
curate evidence --source detector --limit 5 -w "$WS"
step "4. analyze: how spurious is each cue (CLIP presence), with a lift heatmap and image strips; then a report"
curate analyze --source clip -w "$WS"
curate report --format html -w "$WS"
curate report -w "$WS"
step "5. build releases: the group table reproduced (SubpopBench + WILDS exports), FOCUS-style settings (CLIP)"
curate build groups --set group_source=groups.csv --out "$WS/releases/groups" -w "$WS"
curate propose focus-settings --set weights=random -w "$WS"
curate build focus --set allow_machine=true --out "$WS/releases/focus" -w "$WS"
step "6. publish the group release as a Hub-layout folder with a dataset card, and load it with datasets"
curate publish "$WS/releases/groups" --to "folder:$WS/published/groups" -w "$WS"
.venv/bin/python -c "import datasets, sys; d = datasets.load_dataset(sys.argv[1]); print({s: d[s].num_rows for s in d}, d['train'].features['g'])" "$WS/published/groups" 2>/dev/null
step "what the workspace holds"
curate status -w "$WS"
curate quarantine -w "$WS"
curate runs -w "$WS"
curate export items "$WS/exports/items.parquet" -w "$WS"
curate export evidence "$WS/exports/evidence.parquet" -w "$WS"
step "not in the demo: verification rounds (people, in Label Studio: curate annotate serve / push / pull)"
