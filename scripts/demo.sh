#!/usr/bin/env bash
# The main job on the embedded default: set up .venv, materialise SmolLM2-135M-Instruct, train a
# DHRD classifier on CB with the committed rationales, evaluate and export it to exports/cb.
# Re-running reuses what is done (a finished run is not retrained; an interrupted one resumes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DHRD=.venv/bin/dhrd
RUN=${DHRD_DEMO_RUN:-runs/cb-dhrd}
EXPORT=${DHRD_DEMO_EXPORT:-exports/cb}
$DHRD base-model
if [ ! -f "$RUN/summary.json" ]; then
  resume=""
  [ -f "$RUN/checkpoints/last.pt" ] && resume="--resume"
  $DHRD train --task cb --out "$RUN" $resume
fi
$DHRD evaluate "$RUN" --split val
[ -f "$EXPORT/manifest.json" ] || $DHRD export "$RUN" --out "$EXPORT"
echo "exported to $EXPORT"
