"""The kit's models: random-init exports of real shapes, written directly on the device (speed does not
depend on the weights), in a process of their own."""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from .. import REPO
from .stages import sh

TOKENIZER = REPO / "loadtest" / "assets" / "smollm2"  # SmolLM2's tokenizer (a few MB), used for every shape
SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=49152, tie_word_embeddings=True),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True,
                         rope_theta=100000.0),
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                         num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=True,
                         rope_theta=500000.0),
}


def write_export(shape: str, out: Path, device: str, with_base: bool) -> dict:
    """A random-init classifier export of the shape, initialised on `device` in bf16 and written as the
    contract defines it (weights, config, tokenizer, manifest with every file's sha256, manifest digest).
    The weights are hashed once, here; the stages that load it in this call skip re-hashing them.
    `with_base`: also save the causal LM (same backbone, tied LM head) that `/classify/cot` loads.

    Why not `dhrd train` + `dhrd export`: a 3B shape would be initialised on the CPU, trained for
    nothing the serving numbers depend on, and hashed again on every load.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from contract import manifest as layout
    from contract.manifest import HeadConfig, Manifest, seal_export
    from contract.model import ClassifierHead
    from contract.tasks import get_task

    task = get_task("cb")
    config = LlamaConfig(**SHAPES[shape], bos_token_id=1, eos_token_id=2, pad_token_id=2,
                         max_position_embeddings=8192)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    started = time.perf_counter()
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # parameters are born bf16: no fp32 copy of 3.2 B of them
    try:
        with torch.device(device):  # initialised where it will run, not on the CPU
            lm = LlamaForCausalLM(config).eval()
            head = ClassifierHead(HeadConfig(hidden_size=config.hidden_size, num_labels=task.num_labels))
    finally:
        torch.set_default_dtype(default)
    sync()
    init_s = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    # The backbone is the causal LM's body (its tied LM head is the embedding, never exported).
    state = {layout.BACKBONE_PREFIX + k: v for k, v in lm.model.state_dict().items()}
    state.update({layout.HEAD_PREFIX + k: v for k, v in head.state_dict().items()})
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(state, str(out / layout.WEIGHTS_FILE),
              metadata={"format": "pt", "dhrd_format_version": str(layout.EXPORT_FORMAT_VERSION)})
    lm.config.save_pretrained(out)
    for f in TOKENIZER.iterdir():
        shutil.copy(f, out / f.name)
    base = None
    if with_base:
        base = out.parent / f"{out.name}-base"
        lm.save_pretrained(base)
        for f in TOKENIZER.iterdir():
            shutil.copy(f, base / f.name)
    saved = time.perf_counter()
    manifest = Manifest(
        task=task.name, labels=list(task.labels), label_words=list(task.label_words), pooling="last",
        max_length=512, head=head.config,
        base_model={"name": shape, "path": str(base) if base else None, "sha256": None,
                    "source": "random init (loadtest.gpu)"},
        training={"random_init": True, "note": "not trained: serving speed does not depend on the weights"},
        dtype="bfloat16", created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    seal_export(out, manifest)
    return {"export": str(out), "base": str(base) if base else None,
            "parameters": sum(p.numel() for p in lm.model.parameters()) + sum(p.numel() for p in head.parameters()),
            "weights_bytes": (out / layout.WEIGHTS_FILE).stat().st_size, "init_s": round(init_s, 1),
            "save_s": round(saved - started - init_s, 1), "hash_s": round(time.perf_counter() - saved, 1)}


def write_stage(shape: str, work: Path, device: str, with_base: bool, timeout: float) -> dict:
    """`write_export` in its own process: the device memory of the initialised model is freed with it."""
    text = sh([sys.executable, "-m", "loadtest.gpu", "--write-export", str(work / f"{shape}-export"),
               "--shape", shape, "--device", device, *(["--with-base"] if with_base else [])],
              timeout, work / f"{shape}-write.log")
    return json.loads(text.strip().splitlines()[-1])
