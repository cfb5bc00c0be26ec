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
curate propose priors --set types=Background,Co-occurring\ Objects --set core=tools/demo_data/core_attributes.json -w "$WS"
curate propose clip+detector --set clip_weights=random --set detector_weights=random --set imgsz=320 -w "$WS"
curate evidence --source detector --limit 5 -w "$WS"
step "4. analyze: how spurious is each cue (CLIP presence), with a lift heatmap and image strips; then a report"
curate analyze --source clip -w "$WS"
curate report --format html -w "$WS"
curate report -w "$WS"
step "5. verify: the workspace's own Label Studio, one round of CLIP's guesses, three simulated annotators"
echo "(simulated people accept the pre-filled answers with a 10% error rate; their verdicts and the cards say so)"
curate annotate serve -w "$WS"
curate annotate push round-1 --source clip --budget 15 --max-attributes 12 --overlap 0.5 --overlap-k 3 \
    --threshold 0.49 -w "$WS"
curate annotate simulate round-1 --annotators 3 --error-rate 0.1 -w "$WS"
curate annotate pull round-1 -w "$WS"
curate annotate status round-1 -w "$WS"
curate verdicts --round round-1 --limit 8 -w "$WS"
step "6. build releases: the group table reproduced (SubpopBench + WILDS exports), groups and MM-SpuBench items"
echo "   from the round's verdicts, FOCUS-style settings (CLIP)"
curate build groups --set group_source=groups.csv --out "$WS/releases/groups" -w "$WS"
mapfile -t PICKED < <(.venv/bin/python tools/demo_pick_attribute.py "$WS" round-1)
curate build groups "${PICKED[@]}" --set verdict_round=round-1 \
    --set train_correlation=0.5 --set min_group_size=0 --set val_per_group=0 --set test_per_group=0 \
    --out "$WS/releases/verified-groups" -w "$WS"
curate build mmspubench --set verdict_round=round-1 --out "$WS/releases/mmspubench" -w "$WS"
curate propose focus-settings --set weights=random -w "$WS"
curate build focus --set allow_machine=true --out "$WS/releases/focus" -w "$WS"
step "7. publish the releases as Hub-layout folders with dataset cards, and load them with datasets"
for release in groups verified-groups mmspubench; do
  curate publish "$WS/releases/$release" --to "folder:$WS/published/$release" -w "$WS"
  .venv/bin/python -c "import datasets, sys; d = datasets.load_dataset(sys.argv[1]); print(sys.argv[1], {s: d[s].num_rows for s in d}, 'first image:', d[next(iter(d))][0]['image'].size)" "$WS/published/$release" 2>/dev/null
done
step "what the workspace holds"
curate status -w "$WS"
curate quarantine -w "$WS"
curate runs -w "$WS"
curate export items "$WS/exports/items.parquet" -w "$WS"
curate export evidence "$WS/exports/evidence.parquet" -w "$WS"
step "look at the round yourself"
.venv/bin/python - "$WS" <<'PY'
import sys
from annotation import server
ws = sys.argv[1]
admin = server.admin_login(ws)
print(f"Label Studio: {server.connection(ws).url}  (log in as {admin.email}; password and token in "
      f"{server.server_folder(ws) / server.LOGINS_FILE}, readable only by you)")
print(f"stop it with: .venv/bin/curate annotate stop -w {ws}")
PY
