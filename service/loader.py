"""Load an export directory into a `PooledClassifier`: manifest and hashes checked, safetensors only."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from training import contract
from training.tasks import Task


class ExportError(ValueError):
    """A bad, incomplete or tampered export; the message names the file and the problem."""


@dataclass
class LoadedModel:
    manifest: contract.Manifest
    model: contract.PooledClassifier
    tokenizer: object
    task: Task
    path: Path


def read_manifest(path: Path) -> contract.Manifest:
    file = Path(path) / contract.MANIFEST_FILE
    if not file.exists():
        raise ExportError(f"{path} is not a DHRD export (no {contract.MANIFEST_FILE})")
    try:
        return contract.Manifest.from_dict(json.loads(file.read_text()))
    except (json.JSONDecodeError, ValueError) as exc:
        raise ExportError(f"{file}: {exc}") from exc


def check_files(path: Path, manifest: contract.Manifest) -> None:
    """Every file the manifest lists must exist with the recorded sha256."""
    from training.data import file_sha256

    if contract.WEIGHTS_FILE not in manifest.files:
        raise ExportError(f"{path}: manifest lists no {contract.WEIGHTS_FILE}")
    for name, digest in manifest.files.items():
        file = Path(path) / name
        if not file.exists():
            raise ExportError(f"{path}: missing file {name} listed in the manifest")
        actual = file_sha256(file)
        if actual != digest:
            raise ExportError(f"{file}: sha256 {actual[:12]}… does not match the manifest ({digest[:12]}…); "
                              "the export was modified or is corrupt")


def load_export(path: Path, dtype: torch.dtype = torch.bfloat16, device: str = "cpu",
                verify_hashes: bool = True) -> LoadedModel:
    """Build backbone (from config.json, no LM head) + head and load the export's weights strictly."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = Path(path)
    manifest = read_manifest(path)
    if verify_hashes:
        check_files(path, manifest)
    state = load_file(str(path / contract.WEIGHTS_FILE))
    if any("lm_head" in k for k in state):
        raise ExportError(f"{path}: export contains LM-head tensors; classification exports must not")
    config = AutoConfig.from_pretrained(path)
    backbone = AutoModel.from_config(config, dtype=dtype)
    head = contract.ClassifierHead(manifest.head.hidden_size, manifest.head.num_labels, manifest.head.dropout,
                                   manifest.head.type)
    model = contract.PooledClassifier(backbone, head, manifest.pooling)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ExportError(f"{path}: weights do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model = model.to(device=device, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(manifest, model, tokenizer, manifest.task_object(), path)
