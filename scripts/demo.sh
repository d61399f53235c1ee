#!/usr/bin/env bash
# The main job on the embedded default: set up .venv, materialise SmolLM2-135M-Instruct, train a
# DHRD classifier on CB with the committed rationales, evaluate and export it to exports/cb, then
# serve it on http://127.0.0.1:8000 (POST /classify). Re-running reuses what is done: a finished
# run is not retrained, an interrupted one resumes, and the service starts from the export.
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
if [ ! -f "$EXPORT/manifest.json" ]; then
  $DHRD evaluate "$RUN" --split val
  $DHRD export "$RUN" --out "$EXPORT"
fi
[ "${DHRD_DEMO_SERVE:-1}" = 0 ] && exit 0  # scripts/benchmark.sh: build the export only
echo "serving $EXPORT as model 'cb'; try:"
echo "  curl -s -X POST http://127.0.0.1:${DHRD_PORT:-8000}/classify -H 'content-type: application/json' \\"
echo "    -d '{\"model\": \"cb\", \"input\": {\"premise\": \"It rained all day.\", \"hypothesis\": \"The ground got wet.\"}}'"
exec $DHRD serve --model "cb=$EXPORT"
