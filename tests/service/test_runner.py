"""The model runner: what `dhrd serve --compile` changes (start-up cost) and what it must not (results)."""
from __future__ import annotations

import pytest
import torch

from service.device.runner import ModelRunner
from service.engine.encoder import InputEncoder


@pytest.mark.slow
def test_compiled_runner_gives_the_eager_probabilities(tiny_export):
    eager = ModelRunner.from_export(tiny_export, dtype="float32")
    fast = ModelRunner.from_export(tiny_export, dtype="float32", compile=True)
    fast.warmup()  # compiles the batch-1 and batch>1 graphs
    encoder = InputEncoder(eager.manifest, eager.task, eager.tokenizer)
    batch = [encoder.encode({"premise": "It rained.", "hypothesis": "The street is wet."}, 0, True).ids,
             encoder.encode({"premise": "No one came to the party at all.", "hypothesis": "It was crowded."}, 1,
                            True).ids]
    for sequences in (batch, batch[:1], [batch[1]] * 3):  # batch sizes and lengths the warm-up did not see
        assert torch.allclose(torch.tensor(fast.predict(sequences)), torch.tensor(eager.predict(sequences)),
                              atol=1e-5)


def test_a_forward_stub_stands_in_for_every_pass_and_predict_as_runs_the_layout_asked(tiny_export, monkeypatch):
    runner = ModelRunner.from_export(tiny_export, dtype="float32")
    batch = [[5, 6, 7], [8, 9]]
    packed, padded = runner.predict_as(batch, packed=True), runner.predict_as(batch, packed=False)
    assert torch.allclose(torch.tensor(packed), torch.tensor(padded), atol=1e-5)  # two layouts, one answer
    assert runner.predict(batch) == packed  # unequal lengths: the service's rule packs them

    monkeypatch.setattr(ModelRunner, "forward_stub", lambda self, b: [[1.0, 0.0, 0.0]] * len(b))
    assert runner.predict(batch) == [[1.0, 0.0, 0.0]] * 2
