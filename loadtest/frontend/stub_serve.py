"""`dhrd serve` with its forward pass replaced by fixed probabilities: the serving code alone (HTTP,
validation, tokenising, admission, batching, the hand-off to the torch thread, with `--workers N` the
engine process and its socket), for `loadtest.frontend proxy --stub-forward` and `loadtest.frontend
engine-cpu --stub-forward` to measure. Not a way to serve anything.

    python -m loadtest.frontend.stub_serve serve --model cb=EXPORT --port PORT [dhrd serve flags]
"""
from __future__ import annotations

import sys

from service import cli
from service.device.runner import ModelRunner


def fixed_probabilities(self: ModelRunner, batch) -> list[list[float]]:
    n = len(self.manifest.labels)
    return [[1.0 / n] * n for _ in batch]


# At import, not in main(): with --workers the supervisor spawns the engine as a fresh interpreter, which
# imports this main module again (as __mp_main__) before it runs, so the engine's runners get the stub too.
ModelRunner.forward_stub = fixed_probabilities

if __name__ == "__main__":
    raise SystemExit(cli.main(sys.argv[1:]))
