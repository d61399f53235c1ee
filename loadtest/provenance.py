"""Where and how a measurement was taken: the machine, the commit (with `-dirty` for uncommitted changes),
the UTC time and the command line. `report_header()` is the one header every benchmark and report writes."""
from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from . import REPO

from contract.cpu import CPU_FLAGS, cpu_flags, cpu_kind, cpu_name, cpuinfo  # noqa: F401  (re-exported)


def torch_version() -> str | None:
    """The installed torch's version, read without importing it (None where torch is not installed)."""
    if "torch" in sys.modules:
        return getattr(sys.modules["torch"], "__version__", None)
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def machine(flags: bool = True) -> dict:
    """The CPU's model name, cores, Python, the host's name (`node`), torch's version (None: not installed)
    and, with `flags`, which of CPU_FLAGS the CPU has. The accuracy study's rows take it without the flags:
    their schema is fixed."""
    lines = cpuinfo()
    found = {"cpu": cpu_name(lines), "cores": os.cpu_count(),
             "python": platform.python_version(), "node": platform.node(), "torch": torch_version()}
    return {**found, "cpu_flags": cpu_flags(lines)} if flags else found


def command_line(command: list[str] | str | None = None) -> str:
    """The command that produced a result, as typed from the repository root: a string as given, a list
    shell-quoted, and by default this process's own (`python -m loadtest.x ...` or `python scripts/x.py ...`)."""
    if isinstance(command, str):
        return command
    if command is None:
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if spec is not None and spec.name not in (None, "__main__"):
            head = ["python", "-m", spec.name.removesuffix(".__main__")]
        else:
            script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
            head = ["python", (script.relative_to(REPO).as_posix() if script and script.is_relative_to(REPO)
                               else sys.argv[0] if sys.argv else "python")]
        command = [*head, *sys.argv[1:]]
    return shlex.join(command)


def utc_now() -> str:
    """The UTC date and time, ISO 8601 to the second: 2026-12-08T14:03:59Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def report_header(command: list[str] | str | None = None) -> dict:
    """What every measured result records first: the machine (with its CPU flags), the commit, the UTC
    date and time, and the command line (see command_line)."""
    return {"machine": machine(), "commit": commit(), "date": utc_now(), "command": command_line(command)}


def commit() -> str:
    """HEAD's short hash (+ "-dirty"); $DHRD_COMMIT where the checkout has no git (a copied tree)."""
    try:
        return _git_commit()
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("DHRD_COMMIT", "unknown")


# Where measurements are written. A run that appends to a tracked results file (the accuracy study's
# rows, a benchmark's report) changes no code, so it must not mark the next row "-dirty".
RESULT_PATHS = (":(exclude)reports", ":(exclude)loadtest/results")


def _git_commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *RESULT_PATHS],
                           cwd=REPO, capture_output=True, text=True).stdout.strip()
    if not head.strip():
        return os.environ.get("DHRD_COMMIT", "unknown")
    return head.strip() + ("-dirty" if dirty else "")


def write_report(result: dict, path: Path | None = None, command: list[str] | str | None = None) -> dict:
    """A measurement as every tool reports it: the header first, printed as JSON, and written to `path`
    when given. Returns the whole report."""
    import json

    report = {**report_header(command), **result}
    text = json.dumps(report, indent=2)
    print(text)
    if path is not None:
        Path(path).write_text(text + "\n")
    return report
