"""Reading an export directory: the manifest, its files' hashes, and the `PooledClassifier` it holds."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .encoding import load_tokenizer
from .manifest import MANIFEST_DIGEST_FILE, MANIFEST_FILE, WEIGHTS_FILE, Manifest, file_sha256
from .model import ClassifierHead, PooledClassifier
from .tasks import Task, TaskError

log = logging.getLogger("dhrd.contract")


class ExportError(ValueError):
    """A bad, incomplete or tampered export; the message names the file and the problem."""


@dataclass
class LoadedModel:
    """An export in memory: what it promises, the classifier, its tokenizer and task."""

    manifest: Manifest
    model: PooledClassifier
    tokenizer: object
    task: Task


def export_file(path: Path, name: str) -> Path:
    """The file `name` of export `path`, refused unless it stays inside the export: no absolute names,
    no `..`, no symlink that resolves outside (a manifest must not make the reader hash, or the loader
    read, another file on the host). Symlinks within the export are fine. Raises ExportError; the
    message never carries anything read from outside the export."""
    if Path(name).is_absolute() or ".." in Path(name).parts or "\\" in name or name in (".", ""):
        raise ExportError(f"{path}: manifest entry {name[:200]!r} is not a file inside the export "
                          "(absolute paths and '..' are refused)")
    root = Path(path).resolve()
    file = root / name
    target = file.resolve()  # with no '..' and no absolute name, only a symlink can lead out
    if not target.is_relative_to(root):
        raise ExportError(f"{path}: {name} is a symlink to {target}, outside the export; refused")
    return file


def read_manifest(path: Path) -> Manifest:
    """Parse `<path>/manifest.json`; raises ExportError naming the file and the problem."""
    file = export_file(path, MANIFEST_FILE)
    if not file.exists():
        raise ExportError(f"{path} is not a DHRD export (no {MANIFEST_FILE})")
    try:
        manifest = Manifest.from_dict(json.loads(file.read_text()))
    except (json.JSONDecodeError, ValueError) as exc:
        raise ExportError(f"{file}: {exc}") from exc
    found = locate_base_model(manifest.base_model)
    recorded = manifest.base_model.get("path")
    if found is not None and str(found) != recorded:
        manifest.base_model = {**manifest.base_model, "path": str(found), "recorded_path": recorded}
    return manifest


# Only `--cot` needs the export's base causal LM. The manifest records the absolute path it had on the
# training machine; elsewhere (a container, another user) it is found by its name in these directories.
BASE_MODELS_ENV = "DHRD_BASE_MODELS"
BASE_INFO_FILE = "dhrd_base.json"  # written by `dhrd base-model` (training/base_model.py)


def dhrd_home() -> Path:
    """$DHRD_HOME (unset or empty: ~/.cache/dhrd): the embedded backbone under base/, inductor's caches.
    The one definition; `dhrd base-model`, this lookup and `--compile` all read it."""
    return Path(os.environ.get("DHRD_HOME") or Path.home() / ".cache" / "dhrd")


def base_model_candidates(base_model: dict) -> list[Path]:
    """Where an export's base model may be on this machine, in the order they are tried: the recorded
    path; `$DHRD_BASE_MODELS/<name>`; `$DHRD_HOME/base/<name>` (where `dhrd base-model` puts the
    embedded backbone; DHRD_HOME defaults to ~/.cache/dhrd)."""
    candidates = [Path(base_model["path"])] if base_model.get("path") else []
    name = Path(str(base_model.get("name") or "")).name  # a bare directory name, never a path
    if name:
        if os.environ.get(BASE_MODELS_ENV):
            candidates.append(Path(os.environ[BASE_MODELS_ENV]) / name)
        candidates.append(dhrd_home() / "base" / name)
    return candidates


def locate_base_model(base_model: dict) -> Path | None:
    """The first candidate holding an HF model (`config.json`) whose weights hash, when it records one
    (`dhrd_base.json`), is the manifest's; None when there is none."""
    for path in base_model_candidates(base_model):
        try:  # another user's path (the training user's home, seen from a container) may be unreadable
            if not (path / "config.json").is_file():
                continue
            info = path / BASE_INFO_FILE
            recorded = base_model.get("sha256")
            if recorded and info.is_file() and \
                    json.loads(info.read_text()).get("weights_sha256") not in (None, recorded):
                log.warning("%s: a base model named %r, but other weights than the export's", path,
                            base_model.get("name"))
                continue
        except (OSError, ValueError):
            continue
        return path
    return None


def check_consistency(path: Path, manifest: Manifest) -> Task:
    """The manifest must agree with itself and with its task's declaration: a label list that is
    swapped, short or long would serve wrong labels (or fail mid-request). Returns the task."""
    try:
        task = manifest.task_object()
    except TaskError as exc:
        raise ExportError(f"{path}: the manifest's task cannot be built: {exc}") from exc
    problems = []
    if len(manifest.labels) != manifest.head.num_labels:
        problems.append(f"{len(manifest.labels)} labels {manifest.labels} for a head of {manifest.head.num_labels} outputs")
    if list(manifest.labels) != list(task.labels):
        problems.append(f"labels {manifest.labels} differ from task {task.name!r}'s {list(task.labels)} (order matters)")
    if list(manifest.label_words) != list(task.label_words):
        problems.append(f"label_words {manifest.label_words} differ from task {task.name!r}'s {list(task.label_words)}")
    if problems:
        raise ExportError(f"{path}: inconsistent export: " + "; ".join(problems))
    return task


ALLOW_MISSING_DIGEST_FLAG = "--allow-missing-manifest-digest"  # `dhrd serve`'s name for allow_missing_digest


def check_manifest_digest(path: Path, allow_missing: bool = False) -> bool:
    """`manifest.sha256` (written at export) must match manifest.json. A missing one is refused: deleting
    it would otherwise turn a tampered manifest into a warning. Exports written before it existed load
    only with `allow_missing` (`dhrd serve --allow-missing-manifest-digest`), with a warning; returns
    False then. Raises ExportError."""
    digest_file = export_file(path, MANIFEST_DIGEST_FILE)
    if not digest_file.exists():
        if not allow_missing:
            raise ExportError(f"{path}: no {MANIFEST_DIGEST_FILE}, so the manifest's own integrity cannot be "
                              f"checked. Re-export it, or check manifest.json and write its digest "
                              f"(`sha256sum manifest.json > {MANIFEST_DIGEST_FILE}` in the export), or pass "
                              f"{ALLOW_MISSING_DIGEST_FLAG} to load it unchecked (exports older than the digest)")
        log.warning("%s: no %s; the manifest's own integrity is NOT checked (%s)", path, MANIFEST_DIGEST_FILE,
                    ALLOW_MISSING_DIGEST_FLAG)
        return False
    recorded = (digest_file.read_text().split() or [""])[0]
    actual = file_sha256(export_file(path, MANIFEST_FILE))
    if recorded != actual:
        raise ExportError(f"{Path(path) / MANIFEST_FILE}: sha256 {actual[:12]}… does not match {MANIFEST_DIGEST_FILE} "
                          f"({recorded[:12]}…); the manifest was modified or is corrupt")
    return True


def check_export(path: Path, verify_hashes: bool = True, allow_missing_digest: bool = False) -> tuple[Manifest, Task]:
    """Everything that can be checked without building the model: manifest, consistency, that every
    listed file stays inside the export (always), and (with `verify_hashes`) the manifest's digest and
    the files' hashes. Returns the manifest and the task it declares. Raises ExportError."""
    manifest = read_manifest(path)
    task = check_consistency(path, manifest)
    for name in [*manifest.files, WEIGHTS_FILE]:
        export_file(path, name)
    if verify_hashes:
        check_manifest_digest(path, allow_missing_digest)
        check_files(path, manifest)
    return manifest, task


def check_files(path: Path, manifest: Manifest) -> None:
    """Every file the manifest lists must be inside the export and exist with the recorded sha256."""
    if WEIGHTS_FILE not in manifest.files:
        raise ExportError(f"{path}: manifest lists no {WEIGHTS_FILE}")
    for name, digest in manifest.files.items():
        file = export_file(path, name)
        if not file.is_file():
            raise ExportError(f"{path}: missing file {name} listed in the manifest")
        actual = file_sha256(file)
        if actual != digest:
            raise ExportError(f"{file}: sha256 {actual[:12]}… does not match the manifest ({digest[:12]}…); "
                              "the export was modified or is corrupt")


def int8_layers(path: Path, manifest: Manifest, model: PooledClassifier, device: str) -> None:
    """Give an int8 export's model its int8 linear layers (shapes only; the weights load next)."""
    from .int8 import SCHEME, quantize

    scheme = manifest.quantization.get("scheme")
    if scheme != SCHEME:
        raise ExportError(f"{path}: quantization scheme {scheme!r} is not one this build runs ({SCHEME!r})")
    try:
        quantize(model.backbone, manifest.quantization.get("keep_float", []), empty=True)
    except ValueError as exc:
        raise ExportError(f"{path}: manifest.json quantization.keep_float: {exc}") from exc


def load_export(path: Path, dtype: torch.dtype = torch.bfloat16, device: str = "cpu",
                verify_hashes: bool = True, allow_missing_digest: bool = False) -> LoadedModel:
    """Build backbone (from config.json, no LM head) + head and load the export's weights strictly.
    `allow_missing_digest`: load an export without `manifest.sha256` (older exports; see
    `check_manifest_digest`). Raises ExportError."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    path = Path(path)
    manifest, task = check_export(path, verify_hashes, allow_missing_digest)
    if manifest.quantization is not None and torch.device(device).type != "cpu":
        # On a GPU the float export is what serves: our GPU path is bf16 with CUDA graphs, left as it is.
        raise ExportError(f"{path}: an int8 export runs on the CPU only, not on {device}; serve its float "
                          f"export ({manifest.quantization.get('source', 'the one it was quantized from')}) there")
    try:
        state = load_file(str(path / WEIGHTS_FILE))
    except Exception as exc:  # safetensors raises its own error types for truncated or garbled files
        raise ExportError(f"{path / WEIGHTS_FILE}: cannot be read as safetensors ({exc})") from exc
    if any("lm_head" in k for k in state):
        raise ExportError(f"{path}: export contains LM-head tensors; classification exports must not")
    config = AutoConfig.from_pretrained(path)
    # Built where it will run: the random init `from_config` does is overwritten at once by the export's
    # weights, and on a CUDA device it does not hold the CPU for every parameter (a 3B shape has 3.2 B).
    with torch.device(device):
        backbone = AutoModel.from_config(config, dtype=dtype)
        model = PooledClassifier(backbone, ClassifierHead(manifest.head), manifest.pooling)
    if manifest.quantization is not None:
        int8_layers(path, manifest, model, device)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape, e.g. a head with other num_labels
        raise ExportError(f"{path}: weights do not fit the manifest's model: {str(exc).splitlines()[-1].strip()}") from exc
    if missing or unexpected:
        raise ExportError(f"{path}: weights do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model = model.to(device=device, dtype=dtype).eval()
    return LoadedModel(manifest, model, load_tokenizer(path), task)
