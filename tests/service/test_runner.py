"""The model runner: what `dhrd serve --compile` changes (start-up cost) and what it must not (results)."""
from __future__ import annotations

import pytest
import torch

from service.runner import ModelRunner


@pytest.mark.slow
def test_compiled_runner_gives_the_eager_probabilities(tiny_export):
    eager = ModelRunner.from_export(tiny_export, dtype="float32")
    fast = ModelRunner.from_export(tiny_export, dtype="float32", compile=True)
    fast.warmup()  # compiles the batch-1 and batch>1 graphs
    batch = [eager.encode({"premise": "It rained.", "hypothesis": "The street is wet."}, 0, True).ids,
             eager.encode({"premise": "No one came to the party at all.", "hypothesis": "It was crowded."}, 1,
                          True).ids]
    for sequences in (batch, batch[:1], [batch[1]] * 3):  # batch sizes and lengths the warm-up did not see
        assert torch.allclose(torch.tensor(fast.predict(sequences)), torch.tensor(eager.predict(sequences)),
                              atol=1e-5)
