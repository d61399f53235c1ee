"""A measurement names the commit whose code produced it; results written by a run don't make it dirty."""
import importlib.machinery
import re
import subprocess
import sys
import types
from datetime import datetime, timezone

import pytest

from loadtest import REPO, provenance


@pytest.fixture
def repo(tmp_path, monkeypatch):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)
    git("init", "-q")
    for path in ("code.py", "reports/accuracy/rows.jsonl", "loadtest/results/run.json"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(provenance, "REPO", tmp_path)
    return tmp_path


def test_a_clean_checkout_names_its_commit(repo):
    assert provenance.commit().endswith("-dirty") is False


def test_appended_results_do_not_mark_the_commit_dirty(repo):
    (repo / "reports/accuracy/rows.jsonl").write_text("x\n{\"row\": 1}\n")
    (repo / "loadtest/results/run.json").write_text("{}\n")
    assert not provenance.commit().endswith("-dirty")


def test_a_changed_source_file_marks_it_dirty(repo):
    (repo / "code.py").write_text("y\n")
    assert provenance.commit().endswith("-dirty")


def test_the_report_header_names_the_machine_its_cpu_flags_the_commit_the_utc_time_and_the_command(repo):
    before = datetime.now(timezone.utc).replace(microsecond=0)
    header = provenance.report_header(["python", "-m", "loadtest.bench", "--export", "exports/my cb"])
    assert set(header) == {"machine", "commit", "date", "command"}
    m = header["machine"]
    assert m["cpu"] and m["cores"] >= 1 and m["python"] and "node" in m and "torch" in m
    assert set(m["cpu_flags"]) == set(provenance.CPU_FLAGS) >= {"avx2", "avx512_bf16", "amx_bf16"}
    assert all(isinstance(v, bool) for v in m["cpu_flags"].values())
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True).stdout
    assert header["commit"] == head.strip()
    date = datetime.strptime(header["date"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)  # ISO 8601, UTC
    assert before <= date <= datetime.now(timezone.utc)
    assert header["command"] == "python -m loadtest.bench --export 'exports/my cb'"


def test_cpu_flags_are_read_present_or_absent():
    flags = provenance.cpu_flags(["model name\t: Some CPU", "flags\t\t: fpu sse2 avx2 fma amx_tile amx_bf16"])
    assert flags == {"avx2": True, "fma": True, "avx512f": False, "avx512_bf16": False, "avx512_vnni": False,
                     "amx_bf16": True, "amx_int8": False, "amx_tile": True}


def test_the_default_command_is_this_process_as_typed_from_the_repository(monkeypatch):
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))  # a script, not `python -m`
    monkeypatch.setattr(sys, "argv", [str(REPO / "scripts" / "check_service.py"), "--export", "exports/my cb"])
    assert provenance.command_line() == "python scripts/check_service.py --export 'exports/my cb'"
    module = types.ModuleType("__main__")
    module.__spec__ = importlib.machinery.ModuleSpec("loadtest.bench.__main__", None)  # python -m loadtest.bench
    monkeypatch.setitem(sys.modules, "__main__", module)
    assert provenance.command_line() == "python -m loadtest.bench --export 'exports/my cb'"
    assert provenance.command_line("as given") == "as given"


def test_only_provenance_says_what_the_machine_and_the_commit_are():
    """One header for every result: no benchmark or script keeps its own machine() or commit()."""
    own = re.compile(r"^\s*def _?(machine|commit)\(|/proc/cpuinfo", re.MULTILINE)
    files = [f for folder in ("loadtest", "scripts") for f in sorted((REPO / folder).rglob("*.py"))]
    assert len(files) > 20
    found = [f"{f.relative_to(REPO)}: {m.group(0).strip()}" for f in files if f != REPO / "loadtest" / "provenance.py"
             for m in own.finditer(f.read_text())]
    assert not found, "use loadtest.provenance (report_header, machine, commit) instead: " + "; ".join(found)


def test_a_report_is_printed_and_written_with_the_header_first(tmp_path, capsys):
    import json

    from loadtest.provenance import write_report

    out = tmp_path / "r.json"
    report = write_report({"sequences_per_s": 1.5}, out, command="python -m loadtest.forward packing")
    written = json.loads(out.read_text())
    assert written == report == json.loads(capsys.readouterr().out)
    assert list(written)[:4] == ["machine", "commit", "date", "command"] and written["sequences_per_s"] == 1.5
