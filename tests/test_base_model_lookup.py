"""`--cot` needs an export's base model; the manifest records the path it had on the training machine, so
the reader also finds it by name under $DHRD_BASE_MODELS and $DHRD_HOME/base (contract/export_reader.py)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from contract.export_reader import locate_base_model, read_manifest

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "export-v1-cb"  # base model "tiny", path under /tmp


def fake_base(path: Path, weights_sha256: str | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    if weights_sha256:
        (path / "dhrd_base.json").write_text(json.dumps({"weights_sha256": weights_sha256}))
    return path


@pytest.fixture()
def no_base_dirs(monkeypatch, tmp_path):
    monkeypatch.delenv("DHRD_BASE_MODELS", raising=False)
    monkeypatch.setenv("DHRD_HOME", str(tmp_path / "home"))


def test_the_recorded_path_is_kept_when_it_exists(no_base_dirs, tmp_path):
    base = fake_base(tmp_path / "where-it-was")
    assert locate_base_model({"name": "x", "path": str(base)}) == base


def test_an_old_export_finds_its_base_model_by_name_under_dhrd_base_models(no_base_dirs, monkeypatch, tmp_path):
    export = shutil.copytree(FIXTURE, tmp_path / "export")
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["base_model"]["path"] = "/nonexistent/home/trainer/.cache/dhrd/base/tiny"  # another machine's
    (export / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    recorded = manifest["base_model"]
    base = fake_base(tmp_path / "models" / "tiny")
    assert read_manifest(export).base_model["path"] == recorded["path"]  # nothing found: left as recorded
    monkeypatch.setenv("DHRD_BASE_MODELS", str(tmp_path / "models"))
    got = read_manifest(export).base_model
    assert got["path"] == str(base) and got["recorded_path"] == recorded["path"]
    assert got["sha256"] == recorded["sha256"] and got["name"] == "tiny"


def test_dhrd_home_is_searched_after_dhrd_base_models(no_base_dirs, monkeypatch, tmp_path):
    home_base = fake_base(tmp_path / "home" / "base" / "m")
    assert locate_base_model({"name": "m", "path": "/nowhere/m"}) == home_base
    monkeypatch.setenv("DHRD_BASE_MODELS", str(tmp_path / "models"))
    first = fake_base(tmp_path / "models" / "m")
    assert locate_base_model({"name": "m", "path": "/nowhere/m"}) == first


def test_a_base_model_with_other_weights_is_passed_over(no_base_dirs, monkeypatch, tmp_path):
    monkeypatch.setenv("DHRD_BASE_MODELS", str(tmp_path / "models"))
    fake_base(tmp_path / "models" / "m", weights_sha256="0" * 64)
    right = fake_base(tmp_path / "home" / "base" / "m", weights_sha256="a" * 64)
    assert locate_base_model({"name": "m", "path": "/nowhere", "sha256": "a" * 64}) == right
    assert locate_base_model({"name": "m", "path": "/nowhere", "sha256": "b" * 64}) is None


def test_a_name_is_never_a_path(no_base_dirs, monkeypatch, tmp_path):
    monkeypatch.setenv("DHRD_BASE_MODELS", str(tmp_path / "models"))
    fake_base(tmp_path / "secret")
    assert locate_base_model({"name": "../secret", "path": None}) is None


def test_an_unreadable_recorded_path_is_passed_over(no_base_dirs, monkeypatch, tmp_path):
    """Seen from a container's non-root user, the training user's home is unreadable: stat raises
    PermissionError (root, which runs the tests, is never refused, hence the stub)."""
    home_base = fake_base(tmp_path / "home" / "base" / "m")
    real_is_file = Path.is_file

    def is_file(self):
        if str(self).startswith("/root-only/"):
            raise PermissionError(13, "Permission denied", str(self))
        return real_is_file(self)

    monkeypatch.setattr(Path, "is_file", is_file)
    assert locate_base_model({"name": "m", "path": "/root-only/.cache/dhrd/base/m"}) == home_base
    assert locate_base_model({"name": "other", "path": "/root-only/.cache/dhrd/base/other"}) is None


def test_an_empty_dhrd_home_means_the_default_everywhere(monkeypatch):
    """DHRD_HOME="" read as the current directory where `dhrd base-model` writes, and as the default where
    exports look for it: the two copies of the default had drifted. One definition now."""
    from pathlib import Path

    from contract.export_reader import dhrd_home
    from training.base_model import default_base_dir

    monkeypatch.setenv("DHRD_HOME", "")
    assert dhrd_home() == Path.home() / ".cache" / "dhrd"
    assert default_base_dir().parent.parent == dhrd_home()
