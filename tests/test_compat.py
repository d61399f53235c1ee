"""Exports written by earlier versions still load and mean the same (tests/fixtures/README.md)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.mark.parametrize("name", ["export-v1-cb"])
def test_an_export_from_an_earlier_version_loads_and_gives_the_same_probabilities(name):
    from contract.encoding import encode_input
    from contract.export_reader import load_export
    from contract.model import pad_batch

    loaded = load_export(FIXTURES / name, dtype=torch.float32)
    expected = json.loads((FIXTURES / f"{name}.expected.json").read_text())
    for row in expected:
        ids, _ = encode_input(loaded.tokenizer, loaded.task.format(row["fields"]), loaded.manifest.max_length)
        assert ids == row["ids"]
        with torch.no_grad():
            probs = loaded.model(*pad_batch([ids], loaded.tokenizer.pad_token_id)).softmax(-1)[0]
        torch.testing.assert_close(probs, torch.tensor(row["probs"]), atol=1e-6, rtol=1e-5)


def test_the_direct_rust_tokenizer_path_gives_the_wrappers_ids():
    from contract.encoding import load_tokenizer, token_ids

    tokenizer = load_tokenizer(FIXTURES / "export-v1-cb")
    texts = ["", " ", "It rained.", "Premise: a b\nHypothesis: c\nAnswer:", "naïve café — 東京 🙂", "x" * 3000,
             "  leading and trailing  ", "\t\ttabs\r\n"]
    for text in texts:
        assert token_ids(tokenizer, text) == tokenizer(text, add_special_tokens=True)["input_ids"], text
    tokenizer.backend_tokenizer.enable_truncation(8)  # a backend with its own settings: the wrapper decides
    assert token_ids(tokenizer, "x " * 50) == tokenizer("x " * 50, add_special_tokens=True)["input_ids"]


def test_an_export_without_manifest_sha256_loads_only_with_the_explicit_flag(tmp_path):
    """Exports written before `manifest.sha256` existed: refused by default (a tamperer could delete the
    digest), loaded with `allow_missing_digest` (`dhrd serve --allow-missing-manifest-digest`)."""
    import shutil

    from contract.export_reader import ExportError, load_export
    from contract.manifest import MANIFEST_DIGEST_FILE

    copy = tmp_path / "old"
    shutil.copytree(FIXTURES / "export-v1-cb", copy)
    (copy / MANIFEST_DIGEST_FILE).unlink(missing_ok=True)
    with pytest.raises(ExportError, match="no manifest.sha256"):
        load_export(copy, dtype=torch.float32)
    load_export(copy, dtype=torch.float32, allow_missing_digest=True)
