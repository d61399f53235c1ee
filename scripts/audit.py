#!/usr/bin/env python3
"""Audit the installed dependencies (.venv) for known vulnerabilities with pip-audit.

    .venv/bin/python scripts/audit.py            # exit 1 when a vulnerable version is installed

Where no vulnerability database can be reached (our machines see only a PyPI mirror without
vulnerability data), pip-audit looks nothing up; this says so plainly and exits 0 instead of
passing off "nothing checked" as "nothing found". Run it where PyPI's or OSV's database is
reachable (`--service osv` is passed through to pip-audit) for a real answer.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def summarise(report: dict) -> tuple[int, str]:
    """(exit code, message) for a `pip-audit --format json` report."""
    deps = report.get("dependencies", [])
    vulnerable = [d for d in deps if d.get("vulns")]
    skipped = [d for d in deps if d.get("skip_reason")]
    if vulnerable:
        lines = [f"  {d['name']} {d['version']}: " + ", ".join(v["id"] for v in d["vulns"]) for d in vulnerable]
        return 1, f"audit: {len(vulnerable)} vulnerable package(s):\n" + "\n".join(lines)
    if deps and len(skipped) == len(deps):
        return 0, (f"audit: none of {len(deps)} packages could be looked up (no vulnerability database reachable "
                   "from here); NOTHING WAS CHECKED")
    checked = len(deps) - len(skipped)
    return 0, f"audit: {checked} package(s) checked, no known vulnerabilities ({len(skipped)} could not be looked up)"


def main(argv: list[str]) -> int:
    cmd = [str(Path(sys.executable).parent / "pip-audit"), "--local", "--format", "json", "--progress-spinner", "off",
           *argv]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        report = json.loads(proc.stdout or "{}")
    except (subprocess.TimeoutExpired, json.JSONDecodeError, FileNotFoundError) as exc:
        print(f"audit: pip-audit gave no report ({type(exc).__name__}); NOTHING WAS CHECKED", file=sys.stderr)
        return 0
    code, message = summarise(report)
    print(message)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
