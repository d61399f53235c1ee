#!/usr/bin/env bash
# The performance report end to end: BENCHMARKS.md's measured block and loadtest/results/<date>-<host>.*
# Needs (and builds once when missing): the CB export (as scripts/demo.sh makes it) and its int8 export
# (dhrd quantize, seconds), a linear-head CB
# model exported in HF layout for the infinity-emb peer (~4 min), infinity-emb in .venv-infinity.
# Then every scenario in one run (~25 min on our 2-core CPU). Run it on an otherwise idle machine:
# the load generator and the servers share the cores, and anything else running skews every number.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash loadtest/setup_peer.sh
DHRD=.venv/bin/dhrd
EXPORT=${DHRD_BENCH_EXPORT:-exports/cb}
PEER_RUN=runs/cb-linear
PEER_EXPORT=exports/cb-linear
PEER_HF=exports/cb-linear-hf
[ -f "$EXPORT/manifest.json" ] || DHRD_DEMO_TASK=cb DHRD_DEMO_SERVE=0 DHRD_DEMO_EXPORT="$EXPORT" bash scripts/demo.sh
if [ ! -f "$PEER_HF/config.json" ]; then
  resume=""
  [ -f "$PEER_RUN/checkpoints/last.pt" ] && resume="--resume"
  [ -f "$PEER_RUN/summary.json" ] || $DHRD train --task cb --head linear --epochs 1 --out "$PEER_RUN" $resume
  $DHRD export "$PEER_RUN" --out "$PEER_EXPORT" --hf-seqcls "$PEER_HF"
fi
INT8_EXPORT=${EXPORT}-int8  # the int8 scenario's export: dhrd quantize of the same model
[ -f "$INT8_EXPORT/manifest.json" ] || $DHRD quantize "$EXPORT" --out "$INT8_EXPORT"
.venv/bin/python -m loadtest.bench --export "$EXPORT" --peer-hf "$PEER_HF" --int8-export "$INT8_EXPORT" \
  --benchmarks BENCHMARKS.md "$@"
