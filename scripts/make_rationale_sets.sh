#!/usr/bin/env bash
# Regenerate the committed rationale sets (data/rationales/<task>.train.jsonl), one job at a time.
# Every job is resumable: re-running skips rows already written, so a killed run loses nothing.
# Human explanations are imported first where they exist (COPA-SSE, WinoWhy); the embedded
# SmolLM2-135M-Instruct teacher (label-conditioned, greedy) writes the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
R=.venv/bin/dhrd
OUT=data/rationales
gen() { $R rationales --split train --teacher embedded --batch-size 32 --max-new-tokens 96 "$@" > /dev/null; }

$R rationales --task copa --split train --teacher import:copa_sse --out $OUT/copa.train.jsonl > /dev/null
$R rationales --task wsc --split train --teacher import:winowhy --out $OUT/wsc.train.jsonl > /dev/null
gen --task wsc --out $OUT/wsc.train.jsonl          # the WSC examples WinoWhy does not cover
gen --task wsc --out $OUT/wsc.smollm2.train.jsonl  # all of WSC by the teacher: compared with WinoWhy's (TRAINING.md)
gen --task cb --out $OUT/cb.train.jsonl
gen --task rte --out $OUT/rte.train.jsonl
gen --task boolq --out $OUT/boolq.train.jsonl      # all 2,300 rows of train_from_val.jsonl
gen --task wic --sample 2000 --seed 0 --out $OUT/wic.train.jsonl          # documented subset
gen --task multirc --sample 2001 --seed 0 --out $OUT/multirc.train.jsonl  # documented subset: 2,000 rows (DATA.md)
for f in $OUT/*.jsonl; do echo "$f: $(wc -l < "$f") rows"; done
