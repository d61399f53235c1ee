"""The export directory's layout and `manifest.json`: what an export promises, its versions, file hashing."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .tasks import Task, get_task, task_from_spec

CONTRACT_VERSION = "1.1"  # 1.1: optional bias-free linear head (HeadConfig.type "linear")
EXPORT_FORMAT_VERSION = 1

# Export directory layout.
WEIGHTS_FILE = "model.safetensors"  # backbone (no LM head) under "backbone.", head under "head."
MANIFEST_FILE = "manifest.json"
MANIFEST_DIGEST_FILE = "manifest.sha256"  # sha256 of manifest.json, which its own `files` cannot cover
MODEL_CARD_FILE = "README.md"
BACKBONE_PREFIX = "backbone."
HEAD_PREFIX = "head."

HEAD_TYPES = ("mlp2-gelu", "linear")
POOLING_MODES = ("last", "mean")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def seal_export(directory: Path, manifest: "Manifest") -> str:
    """Seal an export: hash every file now in `directory` into `manifest.files`, write `manifest.json`, and
    beside it `manifest.sha256` (the manifest's own hash, which its `files` cannot cover, in `sha256sum`
    format). Files written afterwards are not covered. The one writer of both files (`dhrd export`, the GPU
    kit); `export_reader.check_export` is their reader. Returns the manifest's sha256."""
    directory = Path(directory)
    manifest.files = {p.name: file_sha256(p) for p in sorted(directory.iterdir()) if p.is_file()}
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    digest = file_sha256(directory / MANIFEST_FILE)
    (directory / MANIFEST_DIGEST_FILE).write_text(f"{digest}  {MANIFEST_FILE}\n")
    return digest


@dataclass
class HeadConfig:
    """The pooled head's shape and kind; `type` is one of HEAD_TYPES (`dhrd train --head`)."""

    hidden_size: int
    num_labels: int
    dropout: float = 0.1
    type: str = "mlp2-gelu"


@dataclass
class Manifest:
    """What an export directory promises; written as manifest.json, validated by the export reader."""

    task: str
    labels: list[str]
    label_words: list[str]
    pooling: str
    max_length: int
    head: HeadConfig
    base_model: dict[str, Any]
    training: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    dtype: str = "bfloat16"
    task_spec: dict[str, Any] | None = None  # custom tasks only
    # int8 exports only (`dhrd quantize`): scheme, SmoothQuant alpha, calibration inputs, layers kept in float,
    # the float export it came from. None: a float export.
    quantization: dict[str, Any] | None = None
    truncation: str = "left"
    format_version: int = EXPORT_FORMAT_VERSION
    contract_version: str = CONTRACT_VERSION
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["quantization"] is None:  # a float export's manifest stays readable by builds before int8
            del data["quantization"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Manifest":
        """Parse and version-check a manifest; raises ValueError naming the bad key or version."""
        data = dict(data)
        fmt = data.get("format_version")
        if fmt != EXPORT_FORMAT_VERSION:
            raise ValueError(f"export format_version {fmt!r} is not supported (this build reads {EXPORT_FORMAT_VERSION})")
        contract = str(data.get("contract_version", ""))
        if contract.split(".")[0] != CONTRACT_VERSION.split(".")[0]:
            raise ValueError(f"export contract_version {contract!r} is incompatible with {CONTRACT_VERSION!r}")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"manifest has unknown key(s) {sorted(unknown)}")
        try:
            data["head"] = HeadConfig(**data["head"])
            return cls(**data)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"manifest is missing or has a malformed field: {exc}") from exc

    def task_object(self) -> Task:
        """The task declaration the export was trained on (custom tasks travel in `task_spec`)."""
        return task_from_spec(self.task_spec) if self.task_spec else get_task(self.task)
