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


# --- issue 23, item 10: `files` entries stay inside the export; a missing digest is refused ------------
def _listing(tiny_export: Path, tmp_path: Path, name: str, target: Path) -> Path:
    """A copy of the export whose manifest lists `name` with `target`'s true sha256 (a careful tamperer)."""
    return edited(tiny_export, tmp_path, lambda m: m["files"].update({name: file_sha256(target)}))


@pytest.mark.parametrize("kind", ["parent", "absolute"])
def test_manifest_entries_outside_the_export_are_refused_without_hashing_them(tiny_export, tmp_path, kind):
    secret = tmp_path / "secret"
    secret.write_text("not the export's to read\n")
    name = "../secret" if kind == "parent" else str(secret)
    copy = _listing(tiny_export, tmp_path, name, secret)
    with pytest.raises(ExportError, match="not a file inside the export") as info:
        check_export(copy)
    assert file_sha256(secret)[:12] not in str(info.value)
    with pytest.raises(ExportError, match="not a file inside the export"):  # not a hash question: always checked
        check_export(copy, verify_hashes=False)


def test_a_listed_file_that_is_a_symlink_out_of_the_export_is_refused(tiny_export, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(tiny_export, copy)
    outside = tmp_path / "elsewhere.json"
    shutil.copy(copy / "tokenizer_config.json", outside)  # same bytes: the hash alone would pass it
    (copy / "tokenizer_config.json").unlink()
    (copy / "tokenizer_config.json").symlink_to(outside)
    with pytest.raises(ExportError, match="tokenizer_config.json is a symlink .* outside the export"):
        check_export(copy)


def test_a_symlink_that_stays_inside_the_export_is_fine(tiny_export, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(tiny_export, copy)
    (copy / "blobs").mkdir()
    (copy / "tokenizer.json").rename(copy / "blobs" / "tokenizer.json")
    (copy / "tokenizer.json").symlink_to(Path("blobs") / "tokenizer.json")
    check_export(copy)


def test_a_tampered_manifest_whose_digest_was_deleted_is_refused(tiny_export, tmp_path):
    copy = edited(tiny_export, tmp_path, lambda m: m["metrics"].update(val={"accuracy": 0.99}), rehash=False)
    (copy / MANIFEST_DIGEST_FILE).unlink()
    with pytest.raises(ExportError, match="no manifest.sha256.*allow-missing-manifest-digest"):
        load_export(copy)
    # The operator's explicit, documented opt-in for exports written before the digest existed.
    check_export(copy, allow_missing_digest=True)


def test_serve_refuses_an_export_without_its_digest_and_names_the_flag(tiny_export, tmp_path):
    import subprocess
    import sys

    copy = tmp_path / "export"
    shutil.copytree(tiny_export, copy)
    (copy / MANIFEST_DIGEST_FILE).unlink()
    # A subprocess with a timeout: were the export accepted, `dhrd serve` would go on serving.
    done = subprocess.run([sys.executable, "-m", "dhrd", "serve", "--model", f"cb={copy}", "--port", "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "--allow-missing-manifest-digest" in done.stderr
