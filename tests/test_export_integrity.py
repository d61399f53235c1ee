"""An export must be self-consistent or refused at load, naming the mismatch; its manifest's own
integrity is checkable (`manifest.sha256`)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from contract.export_reader import ExportError, check_export, load_export
from contract.manifest import MANIFEST_DIGEST_FILE, file_sha256


def edited(tiny_export: Path, tmp_path: Path, change, rehash: bool = True) -> Path:
    """A copy of the export whose manifest `change` edits; `rehash` keeps manifest.sha256 matching (a
    careful tamperer, or a buggy exporter), so the consistency checks are what must catch it."""
    copy = tmp_path / "export"
    shutil.copytree(tiny_export, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    change(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if rehash:
        (copy / MANIFEST_DIGEST_FILE).write_text(f"{file_sha256(copy / 'manifest.json')}  manifest.json\n")
    return copy


def test_a_fresh_export_carries_its_manifest_digest(tiny_export):
    line = (tiny_export / MANIFEST_DIGEST_FILE).read_text().split()
    assert line == [file_sha256(tiny_export / "manifest.json"), "manifest.json"]
    check_export(tiny_export)


def test_swapped_labels_are_refused(tiny_export, tmp_path):
    def swap(m):
        m["labels"][0], m["labels"][1] = m["labels"][1], m["labels"][0]
    with pytest.raises(ExportError, match="inconsistent export: labels .* differ from task 'cb'"):
        load_export(edited(tiny_export, tmp_path, swap))


def test_a_short_label_list_is_refused(tiny_export, tmp_path):
    with pytest.raises(ExportError, match="2 labels .* for a head of 3 outputs"):
        load_export(edited(tiny_export, tmp_path, lambda m: m["labels"].pop()))


def test_a_head_size_that_does_not_fit_the_weights_is_refused(tiny_export, tmp_path):
    def grow(m):
        m["head"]["num_labels"] = 4
        m["labels"].append("extra")
    with pytest.raises(ExportError, match="inconsistent export"):
        load_export(edited(tiny_export, tmp_path, grow))


def test_an_edited_manifest_fails_its_digest(tiny_export, tmp_path):
    copy = edited(tiny_export, tmp_path, lambda m: m["metrics"].update(val={"accuracy": 0.99}), rehash=False)
    with pytest.raises(ExportError, match="manifest.json: sha256 .* does not match manifest.sha256"):
        load_export(copy)
    load_export(copy, verify_hashes=False)  # the operator's explicit opt-out still loads it


def test_truncated_weights_are_an_export_error_even_without_hash_checks(tiny_export, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(tiny_export, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ExportError, match="model.safetensors: sha256"):
        check_export(copy)
    with pytest.raises(ExportError, match="cannot be read as safetensors"):
        load_export(copy, verify_hashes=False)


def test_a_missing_file_is_named(tiny_export, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(tiny_export, copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(ExportError, match="missing file tokenizer.json"):
        check_export(copy)
