"""Export a run for serving: merged backbone (no LM head) + pooled head as safetensors, config,
tokenizer, manifest and model card; then re-load it with the contract's export reader and compare logits."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from contract import manifest as layout
from contract.export_reader import load_export
from contract.manifest import Manifest, seal_export
from contract.model import DTYPES, ClassifierHead, PooledClassifier

from .data import load_examples
from .evaluate import predict_logits
from .lora import merged
from .file_modes import plain_modes
from .run_dir import load_run_model, read_best_meta, resolve_backbone


def export_state(backbone: torch.nn.Module, head: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Backbone and head tensors under their contract prefixes; the LM head is never included.

    With tied embeddings the input embedding stays (it is the backbone's own); a separate
    `lm_head` is not part of the base model, so it cannot leak in.
    """
    state = {layout.BACKBONE_PREFIX + k: v for k, v in backbone.state_dict().items()}
    state.update({layout.HEAD_PREFIX + k: v for k, v in head.state_dict().items()})
    leaked = [k for k in state if "lm_head" in k]
    if leaked:
        raise RuntimeError(f"export would contain LM-head tensors {leaked}")
    return {k: v.detach().to(dtype if v.is_floating_point() else v.dtype).contiguous().cpu() for k, v in state.items()}


def export_hf_seqcls(backbone: torch.nn.Module, head: ClassifierHead, tokenizer, task, out: Path,
                     dtype: torch.dtype) -> Path:
    """The same classifier in Hugging Face's `*ForSequenceClassification` layout, for servers that load
    that (infinity-emb, TEI, vLLM): backbone under `model.`, the head as `score`. Only the bias-free
    linear head maps exactly; the 2-layer MLP head has no HF equivalent, so it is refused."""
    from transformers import AutoModelForSequenceClassification

    if head.config.type != "linear":
        raise ValueError("the HF sequence-classification layout needs the bias-free linear head")
    config = backbone.config.__class__.from_dict(backbone.config.to_dict())
    config.architectures = [config.architectures[0].replace("ForCausalLM", "ForSequenceClassification")
                            if config.architectures else "ForSequenceClassification"]
    config.num_labels = task.num_labels
    config.id2label = dict(enumerate(task.labels))
    config.label2id = {label: i for i, label in enumerate(task.labels)}
    config.pad_token_id = tokenizer.pad_token_id
    model = AutoModelForSequenceClassification.from_config(config)
    model.base_model.load_state_dict(backbone.state_dict())
    model.score.weight.data.copy_(head.out.weight.data)
    model.to(dtype).save_pretrained(out)
    tokenizer.save_pretrained(out)
    tokenizer_config = out / "tokenizer_config.json"
    settings = json.loads(tokenizer_config.read_text())
    settings["tokenizer_class"] = "PreTrainedTokenizerFast"  # what transformers 4.x servers can load
    tokenizer_config.write_text(json.dumps(settings, indent=2) + "\n")
    return out


def export_run(run_dir: Path, out: Path, checkpoint: str = "best", dtype: str = "bfloat16", verify_examples: int = 16,
               data_dir: Path | None = None, hf_seqcls: Path | None = None) -> Path:
    """Write the export directory and verify it; returns its path. Raises on a failed check."""
    from safetensors.torch import save_file

    run_dir, out = Path(run_dir), Path(out)
    model, tokenizer, cfg, task = load_run_model(run_dir, checkpoint)
    if hf_seqcls is not None and model.head.config.type != "linear":  # refuse before writing anything
        raise ValueError("--hf-seqcls needs a model trained with --head linear: HF's sequence-classification "
                         "layout has a single bias-free `score` projection, not our 2-layer MLP head")
    backbone_path = resolve_backbone(cfg)
    examples = load_examples(task, "val", data_dir or cfg.data_dir, limit=verify_examples)
    trained = predict_logits(model, tokenizer, task, examples, cfg.max_length, precision="fp32")

    backbone = merged(model.backbone)
    staged = out.with_name(out.name + ".tmp")
    if staged.exists():
        shutil.rmtree(staged)
    staged.mkdir(parents=True)
    state = export_state(backbone, model.head, DTYPES[dtype])
    save_file(state, str(staged / layout.WEIGHTS_FILE),
              metadata={"format": "pt", "dhrd_format_version": str(layout.EXPORT_FORMAT_VERSION)})
    # The training-side modules holding exactly the exported (possibly bf16-rounded) weights: the
    # service must reproduce their fp32 logits to numerical precision.
    reference_model = PooledClassifier(backbone, model.head, cfg.pooling)
    reference_model.load_state_dict({k: v.float() for k, v in state.items()})
    reference = predict_logits(reference_model, tokenizer, task, examples, cfg.max_length,
                               precision="fp32")
    backbone.config.save_pretrained(staged)
    tokenizer.save_pretrained(staged)

    from .base_model import describe

    meta = read_best_meta(run_dir)
    manifest = Manifest(
        task=task.name, labels=list(task.labels), label_words=list(task.label_words), pooling=cfg.pooling,
        max_length=cfg.max_length,
        head=model.head.config,
        base_model=describe(backbone_path),
        training={"alpha": cfg.alpha, "beta": cfg.beta, "lm_span": cfg.lm_span, "lora": cfg.lora,
                  "lora_r": cfg.lora_r if cfg.lora else None, "epochs": cfg.epochs, "lr": cfg.lr,
                  "seed": cfg.seed, "checkpoint": checkpoint, "step": meta.get("step")},
        metrics={"val": meta.get("val", {})}, data=meta.get("data", {}), dtype=dtype,
        task_spec=dict(task.spec) if task.spec else None,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    plain_modes(staged)  # safetensors writes 0600: a mounted export must be readable by the serving user
    seal_export(staged, manifest)
    (staged / layout.MODEL_CARD_FILE).write_text(_model_card(manifest))
    if out.exists():
        shutil.rmtree(out)
    staged.rename(out)
    verify_export(out, reference, trained, examples, task, tokenizer, cfg.max_length)
    if hf_seqcls is not None:
        plain_modes(export_hf_seqcls(backbone, model.head, tokenizer, task, Path(hf_seqcls), DTYPES[dtype]))
    return out


def _compare(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    pa, pb = a.softmax(-1), b.softmax(-1)
    return {"max_prob_diff": float((pa - pb).abs().max()),
            "argmax_agreement": float((pa.argmax(-1) == pb.argmax(-1)).float().mean())}


def verify_export(out: Path, reference: torch.Tensor, trained: torch.Tensor, examples, task, tokenizer,
                  max_length: int, tolerance: float = 1e-4) -> dict:
    """Load with the contract's export reader (what the service runs) and compare fp32 logits on real examples.

    Args:
        reference: logits of the training-side modules holding the exported weights (must match).
        trained: logits of the trained fp32 weights before any dtype rounding (reported as drift).
    Raises RuntimeError when the served model does not reproduce `reference`.
    """
    loaded = load_export(out, dtype=torch.float32)
    got = predict_logits(loaded.model, tokenizer, task, examples, max_length, precision="fp32")
    served = _compare(reference, got)
    report = {"examples": len(examples), **served, "tolerance": tolerance,
              "dtype_drift_vs_fp32_training_weights": {"dtype": loaded.manifest.dtype, **_compare(trained, got)}}
    (out / "verify.json").write_text(json.dumps(report, indent=2) + "\n")
    if served["max_prob_diff"] > tolerance or served["argmax_agreement"] < 1.0:
        raise RuntimeError(f"export check failed: served logits differ from training ({report})")
    return report


def _model_card(m: Manifest) -> str:
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in m.metrics.get("val", {}).items())
    return f"""# DHRD classifier: {m.task}

Pooled classifier (backbone + 2-layer MLP head on the {m.pooling} input token) trained with
Dual-Head Reasoning Distillation (arXiv 2509.21487): loss = {m.training['beta']}·CE + {m.training['alpha']}·LM.
The reasoning (LM) head was used only in training and is not in this export.

- Base model: {m.base_model.get('name')} (weights sha256 {m.base_model.get('sha256')})
- Labels: {', '.join(m.labels)}
- Max input tokens: {m.max_length} (longer inputs lose their beginning)
- Validation: {metrics or 'n/a'}
- Contract {m.contract_version}, export format {m.format_version}, weights dtype {m.dtype}

Serve with `dhrd serve --model {m.task}=<this directory>`. Input text must be formatted by the
task's template in `contract/tasks/` (the service does this for structured inputs).
"""
