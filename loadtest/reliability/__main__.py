"""Reliability runs, one mode each (`python -m loadtest.reliability MODE --help` for its flags):

    python -m loadtest.reliability soak --export exports/cb --minutes 5          # loadtest/results/soak/
    python -m loadtest.reliability startup --export exports/cb --flags=--compile --starts 2
    python -m loadtest.reliability stuck-front-end --export tests/fixtures/export-v1-cb
"""
from __future__ import annotations

from loadtest.modes import dispatch

MODES = {
    "soak": ("loadtest.reliability.soak", "sustained overload with deadlines, disconnects and bad inputs; "
                                          "stalls; SIGTERM under load"),
    "startup": ("loadtest.reliability.startup", "time from dhrd serve to /ready, consecutive starts sharing a cache"),
    "stuck-front-end": ("loadtest.reliability.stuck_front_end", "a stopped front end under --workers 2: connections "
                                                                "that time out, per socket layout"),
}

if __name__ == "__main__":
    raise SystemExit(dispatch("loadtest.reliability", __doc__, MODES))
