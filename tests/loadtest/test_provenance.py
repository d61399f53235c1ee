"""A measurement names the commit whose code produced it; results written by a run don't make it dirty."""
import subprocess

import pytest

from loadtest import provenance


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
