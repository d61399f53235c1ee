"""What training writes for others to read (exports, best/, the base-model cache) gets the modes a plain
open() gives, 0666 less the umask: safetensors writes 0600, which a container's non-root user cannot read."""
from __future__ import annotations

import json
import os
import stat
import zipfile
from pathlib import Path

from training import base_model
from training.file_modes import plain_modes


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_export_and_its_runs_best_weights_are_readable_by_others(tiny_export):
    mask = os.umask(0o022)
    os.umask(mask)
    for path in [tiny_export, *tiny_export.iterdir(), tiny_export.parent / "run" / "best" / "trainable.safetensors"]:
        assert mode(path) == (0o777 if path.is_dir() else 0o666) & ~mask, path


def test_plain_modes_respects_the_umask(tmp_path):
    from safetensors.torch import save_file
    import torch

    save_file({"w": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    (tmp_path / "sub").mkdir(mode=0o700)
    assert mode(tmp_path / "w.safetensors") == 0o600  # what safetensors does on its own
    old = os.umask(0o022)
    try:
        plain_modes(tmp_path)
        assert mode(tmp_path / "w.safetensors") == 0o644 and mode(tmp_path / "sub") == 0o755
        os.umask(0o077)
        plain_modes(tmp_path / "w.safetensors")
        assert mode(tmp_path / "w.safetensors") == 0o600
    finally:
        os.umask(old)


def test_the_base_model_cache_is_readable_by_others(tmp_path, monkeypatch):
    """materialise() works in a 0700 temporary directory and renames the result out of it."""
    from safetensors.torch import save_file
    import torch

    def convert(gguf_path, out):
        out.mkdir()
        save_file({"w": torch.zeros(2)}, str(out / "model.safetensors"))
        (out / "config.json").write_text("{}")

    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(base_model.GGUF_MEMBER, b"not really a gguf")
    monkeypatch.setattr(base_model, "check_wheel", lambda path: None)
    monkeypatch.setattr(base_model, "convert_gguf", convert)
    old = os.umask(0o022)
    try:
        out = base_model.materialise(tmp_path / "cache" / "base" / "m", wheel=wheel)
    finally:
        os.umask(old)
    assert json.loads((out / base_model.INFO_FILE).read_text())["name"] == base_model.BASE_NAME
    assert mode(out) == 0o755
    assert all(mode(p) == 0o644 for p in out.iterdir())
