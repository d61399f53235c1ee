"""`dhrd serve` in one process with its forward pass replaced by fixed probabilities: the front end alone
(HTTP, validation, tokenising, admission, the batcher and its hand-off to the torch thread, the answer),
for `loadtest.frontend --stub-forward` to set against the null server. Not a way to serve anything.

    python -m loadtest.stub_serve serve --model cb=EXPORT --port PORT [dhrd serve flags]

One process only: with `--workers N` the engine is a fresh interpreter that would run the real forward pass.
"""
from __future__ import annotations

import sys

from service import cli
from service.runner import ModelRunner


def fixed_probabilities(self: ModelRunner, batch) -> list[list[float]]:
    n = len(self.manifest.labels)
    return [[1.0 / n] * n for _ in batch]


def main(argv: list[str]) -> int:
    if any(a == "--workers" or a.startswith("--workers=") for a in argv):
        print("loadtest.stub_serve: one process only (--workers would start an engine with the real forward pass)",
              file=sys.stderr)
        return 2
    ModelRunner.predict = fixed_probabilities  # before any runner exists: every batcher is built on this one
    return cli.main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
