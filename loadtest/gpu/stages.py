"""Running a call's stages: each under its budget, skipped when it no longer fits, the report saved after
every stage, and a watchdog that ends the run before the device's own limit does."""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

from .. import REPO


class Stages:
    """Runs named stages, each under its budget; each outcome lands in `report["stages"]`, and
    `save(report)` runs after every stage, so a run killed midway (device time spent) still returns
    what it measured. A stage whose budget does not fit in what is left of the call's is skipped with
    the reason and never started: a stage cut off halfway measures nothing and costs the rest."""

    def __init__(self, report: dict, deadline: float, save=lambda report: None):
        self.report, self.deadline, self.save = report, deadline, save

    def skip(self, name: str, reason: str) -> None:
        self.report["stages"][name] = {"status": "skipped", "reason": reason}
        print(f"[gpu] {name}: skipped ({reason})", flush=True)
        self.save(self.report)

    def run(self, name: str, budget: float, fn, *args):
        """`fn(*args, budget)`, or None when it failed, timed out or did not fit."""
        left = self.deadline - time.monotonic()
        if budget > left:
            self.skip(name, f"its budget of {budget:g} s does not fit in the {max(left, 0):.0f} s left of the call's")
            return None
        self.report["running"] = name  # what a watchdog or a kill interrupted
        self.save(self.report)
        started = time.monotonic()
        try:
            result = fn(*args, budget)
            status = {"status": "ok"}
        except subprocess.TimeoutExpired as exc:
            result, status = None, {"status": "timeout", "error": f"over {exc.timeout:.0f} s"}
        except Exception as exc:  # one stage's failure is recorded; the next stage still runs
            result, status = None, {"status": "failed", "error": f"{type(exc).__name__}: {str(exc)[-2000:]}"}
        status["seconds"], status["budget_s"] = round(time.monotonic() - started, 1), budget
        self.report["stages"][name] = status
        self.report.pop("running", None)
        print(f"[gpu] {name}: {status}", flush=True)
        self.save(self.report)
        return result

    def measure(self, into: dict, key: str, name: str, budget: float, fn, *args):
        """`run`, with the result stored at `into[key]` and saved before the next stage starts."""
        into[key] = self.run(name, budget, fn, *args)
        self.save(self.report)
        return into[key]


CHILDREN: list[subprocess.Popen] = []  # servers and clients still running, for the watchdog to end


def watchdog(report: dict, save, seconds: float) -> threading.Timer:
    """Ends the run `seconds` from now whatever it is doing (a stage that ignores its budget), with the
    interrupted stage recorded: the report must come back before the device's own limit kills us."""
    def fire() -> None:
        name = report.get("running")
        if name:
            report["stages"][name] = {"status": "timeout", "error": "the call's budget ran out (kit watchdog)"}
        report["watchdog"] = True
        save(report)
        for proc in CHILDREN:
            if proc.poll() is None:
                proc.kill()
        print("[gpu] watchdog: the call's budget ran out; report saved", flush=True)
        os._exit(3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer


def sh(cmd: list[str], timeout: float, log: Path) -> str:
    """Run a command, its output to `log`; raise with the log's tail on failure (TimeoutExpired on timeout)."""
    with log.open("w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, cwd=REPO,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    text = log.read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} exited {proc.returncode}: {text[-1500:]}")
    return text


def saver(path: Path):
    """Writes the report to `path` atomically (a kill mid-write leaves the previous complete version)."""
    lock = threading.Lock()  # the watchdog's thread may save while the main thread does

    def save(report: dict) -> None:
        with lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".json.tmp")
            partial.write_text(json.dumps(report, indent=2, default=str) + "\n")
            os.replace(partial, path)
    return save
