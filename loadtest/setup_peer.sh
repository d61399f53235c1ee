#!/usr/bin/env bash
# The peer for the load tests: infinity-emb 0.0.78 in its own virtual environment (.venv-infinity),
# since it pins transformers 4.x. torch comes from the same CPU wheel as ours (constraints.txt).
# Serve an HF *ForSequenceClassification export (dhrd export --hf-seqcls DIR, needs --head linear):
#   .venv-infinity/bin/infinity_emb v2 --model-id DIR --engine torch --device cpu --dtype bfloat16 --batch-size 32
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-infinity/bin/infinity_emb ]; then
  python3 -m venv .venv-infinity
  .venv-infinity/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv-infinity/bin/python -m pip install --quiet --disable-pip-version-check \
    "torch==$(grep '^torch==' constraints.txt | cut -d= -f3)" "infinity-emb[server,torch]==0.0.78"
fi
.venv-infinity/bin/infinity_emb --help > /dev/null && echo "infinity-emb ready in .venv-infinity"
