"""`dhrd quantize`: an int8 export from a float one (issue 31).

Quantizing is a step after export, not an export flag: it needs the float export as its reference (the
gate compares the two), and it works on any float export, not only on a run still on disk. It needs the
task's train split: the SmoothQuant factors come from the task's own training inputs, never from a split
anyone scores. What it writes is an ordinary export directory whose manifest says `quantization`; the
service refuses to serve it on a CPU where its gate has not passed (contract/int8.py, `gate_for`).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import torch

from contract import manifest as layout
from contract.encoding import encode_input
from contract.export_reader import load_export
from contract.int8 import SCHEME, Int8Linear, calibrate, quantize, smooth
from contract.manifest import seal_export
from contract.model import DTYPES

from .data import load_examples
from .file_modes import plain_modes

# What the int8 export takes from the float one as it is; the weights, manifest and its digest, the model
# card and verify.json are its own.
OWN_FILES = {layout.WEIGHTS_FILE, layout.MANIFEST_FILE, layout.MANIFEST_DIGEST_FILE, layout.MODEL_CARD_FILE,
             "verify.json", "int8-gate.json"}


def int8_state(model, float_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The model's tensors as the export stores them: int8 weights as they are, each int8 layer's scales and
    bias in float32, every other float tensor in the float export's dtype."""
    keep_fp32 = {f"{layout.BACKBONE_PREFIX}{name}.{buffer}" for name, m in model.backbone.named_modules()
                 if isinstance(m, Int8Linear) for buffer in ("weight_scale", "bias")}
    return {k: (v.float() if k in keep_fp32 else v.to(float_dtype) if v.is_floating_point() else v)
            .detach().contiguous().cpu() for k, v in model.state_dict().items()}


def quantize_export(src: Path, out: Path, calibration: int = 256, alpha: float = 0.5,
                    keep_float: list[str] | None = None, data_dir: Path | None = None,
                    verify_examples: int = 16) -> Path:
    """Write the int8 export of float export `src` to `out` and check it loads to the same answers as the
    model it was written from; returns `out`. Raises ValueError (an int8 source, a bad layer name) or
    ExportError (a bad source)."""
    from safetensors.torch import save_file

    src, out = Path(src), Path(out)
    loaded = load_export(src, dtype=torch.float32)
    manifest, task, tokenizer, model = loaded.manifest, loaded.task, loaded.tokenizer, loaded.model
    if manifest.quantization is not None:
        raise ValueError(f"{src} is already an int8 export; quantize its float export")
    calibration_ids = [encode_input(tokenizer, task.format(e.fields), manifest.max_length)[0]
                       for e in load_examples(task, "train", data_dir, limit=calibration)]
    backbone = model.backbone
    # Each input alone: a padded batch would count the padding tokens' activations in the maxima.
    smooth(backbone, calibrate(backbone, [{"input_ids": torch.tensor([ids])} for ids in calibration_ids]), alpha)
    replaced = quantize(backbone, keep_float or [])
    state = int8_state(model, DTYPES[manifest.dtype])
    # The model as written: a bf16 export stores its float tensors (embeddings, norms with the smoothing
    # folded in, the head) in bf16, so the check below compares like with like, not with the fp32 originals.
    model.load_state_dict(state)

    staged = out.with_name(out.name + ".tmp")
    if staged.exists():
        shutil.rmtree(staged)
    staged.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and f.name not in OWN_FILES:
            shutil.copy2(f, staged / f.name)
    save_file(state, str(staged / layout.WEIGHTS_FILE),
              metadata={"format": "pt", "dhrd_format_version": str(layout.EXPORT_FORMAT_VERSION)})
    quantized = dataclasses.replace(manifest, files={}, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                    quantization={"scheme": SCHEME, "smoothquant_alpha": alpha,
                                                  "calibration": {"split": "train", "inputs": len(calibration_ids)},
                                                  "int8_layers": len(replaced), "keep_float": list(keep_float or []),
                                                  "source": str(src), "source_manifest_sha256":
                                                      layout.file_sha256(src / layout.MANIFEST_FILE)})
    plain_modes(staged)
    seal_export(staged, quantized)
    (staged / layout.MODEL_CARD_FILE).write_text(model_card(quantized))
    # Checked before it takes `out`'s place: an export that fails its check never looks finished (and an
    # older good one at `out` stays).
    verify_int8_export(staged, model, tokenizer, task, manifest.max_length, data_dir, verify_examples)
    if out.exists():
        shutil.rmtree(out)
    staged.rename(out)
    return out


def verify_int8_export(out: Path, model, tokenizer, task, max_length: int, data_dir: Path | None,
                       examples: int) -> dict:
    """The written export, loaded as the service loads it, must give the in-memory int8 model's logits (the
    same arithmetic on the same tensors). Writes verify.json; raises RuntimeError when it does not."""
    from .evaluate import predict_logits

    val = load_examples(task, "val", data_dir, limit=examples)
    reference = predict_logits(model, tokenizer, task, val, max_length, precision="fp32")
    got = predict_logits(load_export(out, dtype=torch.float32).model, tokenizer, task, val, max_length,
                         precision="fp32")
    diff = float((reference.softmax(-1) - got.softmax(-1)).abs().max())
    report = {"examples": len(val), "max_prob_diff_vs_written_model": diff, "tolerance": 1e-4,
              "note": "the int8 model against itself as written and re-loaded; its distance from the float "
                      "export is the gate's question (python -m loadtest.forward int8 --int8-export ...)"}
    (out / "verify.json").write_text(json.dumps(report, indent=2) + "\n")
    if diff > 1e-4:
        raise RuntimeError(f"int8 export check failed: the re-loaded model differs ({report})")
    return report


def model_card(m) -> str:
    q = m.quantization
    return f"""# DHRD classifier: {m.task} (int8)

The float export {q['source']} with its backbone's linear layers in int8: per-output-channel weight
scales, per-token activation scales computed at run time (a request's answer never depends on its batch),
and SmoothQuant factors (alpha {q['smoothquant_alpha']}) from {q['calibration']['inputs']} train inputs
folded into the layers before. {q['int8_layers']} layers are int8; kept in float: {', '.join(q['keep_float']) or 'none'}.

It runs on the CPU only (`torch._int_mm`: oneDNN with AVX512-VNNI or AMX, a slow reference loop without).
`dhrd serve` refuses it on a CPU where its gate has not passed (`python -m loadtest.forward int8 --export
<float export> --int8-export <this directory> --gate`), unless given --allow-ungated-int8.

- Labels: {', '.join(m.labels)}; max input tokens {m.max_length}; contract {m.contract_version}
"""
