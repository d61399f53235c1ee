#!/usr/bin/env bash
# The pre-registered e-SNLI confirmation (TRAINING.md, "Confirmation plan" and its Amendment 1), run in
# the background from a git worktree pinned at the amendment commit, so nothing merged on main while it
# runs changes the code under it. Every finished run's row and predictions are committed on main
# (`accuracy_study.py --confirmation --commit`); a run killed half-way resumes from its last checkpoint
# while its run directory exists, and is redone from the start on a fresh machine.
#
#   scripts/confirmation.sh start    # create or reuse the worktree, then run or resume in the background
#   scripts/confirmation.sh status   # which runs are committed, what runs now, the log's last lines
#   scripts/confirmation.sh stop     # stop the run in progress (it resumes on the next start)
#
# Stop it for any benchmark's minutes: one heavy torch job at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
MAIN=$(pwd)
PIN=$(cut -d' ' -f1 reports/accuracy/confirmation.pin)  # the amendment commit, written after it landed
HERE=$MAIN/.confirmation
TREE=$HERE/worktree
PIDFILE=$HERE/pid
LOG=$HERE/log

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

case "${1:-status}" in
  start)
    if running; then echo "confirmation: already running (pid $(cat "$PIDFILE"))"; exit 0; fi
    bash scripts/setup.sh
    mkdir -p "$HERE"
    if [ ! -d "$TREE" ]; then
      git worktree prune
      git worktree add --detach "$TREE" "$PIN" >/dev/null
    fi
    at=$(git -C "$TREE" rev-parse HEAD)
    [ "$at" = "$(git rev-parse "$PIN^{commit}")" ] || { echo "confirmation: $TREE is at $at, not $PIN" >&2; exit 1; }
    [ -z "$(git -C "$TREE" status --porcelain --untracked-files=no)" ] || {
      echo "confirmation: $TREE has local changes; the runs must train from the pinned commit" >&2; exit 1; }
    # main's .venv runs the worktree's packages: PYTHONPATH comes before the editable install's finder. It is
    # reached through a link inside the worktree (ignored there), so the commands a row records, which the
    # study writes relative to its checkout, name no machine's paths.
    ln -sfn "$MAIN/.venv" "$TREE/.venv"
    PY="$TREE/.venv/bin/python"
    env=(PYTHONPATH="$TREE" DHRD_DATA_DIR="${DHRD_DATA_DIR:-$(cd "$MAIN/../shared/data" && pwd)}")
    where=$(cd "$TREE" && env "${env[@]}" "$PY" -c \
      "import contract, training, dhrd; print(*{m.__file__.rsplit('/', 2)[0] for m in (contract, training, dhrd)})")
    [ "$where" = "$TREE" ] || { echo "confirmation: the packages load from $where, not $TREE" >&2; exit 1; }
    (cd "$TREE" && env "${env[@]}" "$PY" -m dhrd base-model >/dev/null)
    cd "$TREE"
    env "${env[@]}" setsid nohup "$PY" scripts/accuracy_study.py --confirmation --commit \
      --no-report --rows "$MAIN/reports/accuracy/rows.jsonl" --runs runs/confirmation >>"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
    echo "confirmation: running from $PIN (pid $!); log: $LOG"
    ;;
  status)
    git log --format='%h %s' --grep '^Study run .*esnli-confirm' | cat
    if running; then echo "running (pid $(cat "$PIDFILE"))"; else echo "not running"; fi
    [ -f "$LOG" ] && tail -n 5 "$LOG"
    ;;
  stop)
    if running; then kill -TERM -- -"$(cat "$PIDFILE")"; echo "confirmation: stopped"; else echo "not running"; fi
    ;;
  *) echo "usage: $0 start|status|stop" >&2; exit 2 ;;
esac
