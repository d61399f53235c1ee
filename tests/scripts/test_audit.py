"""The dependency audit tells "nothing was checked" apart from "nothing was found"."""
from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "audit.py"
spec = importlib.util.spec_from_file_location("audit", SCRIPT)
audit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(audit)


def test_a_vulnerable_package_fails_the_audit():
    code, message = audit.summarise({"dependencies": [
        {"name": "a", "version": "1", "vulns": [{"id": "PYSEC-1"}]}, {"name": "b", "version": "2", "vulns": []}]})
    assert code == 1 and "a 1: PYSEC-1" in message


def test_an_unreachable_database_is_said_plainly_and_does_not_fail():
    code, message = audit.summarise({"dependencies": [{"name": "a", "skip_reason": "not found"}]})
    assert code == 0 and "NOTHING WAS CHECKED" in message


def test_a_clean_audit_counts_what_it_checked():
    code, message = audit.summarise({"dependencies": [{"name": "a", "version": "1", "vulns": []},
                                                      {"name": "b", "skip_reason": "x"}]})
    assert code == 0 and "1 package(s) checked" in message
