"""The forward pass alone on the device, eager and with CUDA graphs: the ceiling /classify is a share of.
Runs in its own process (`python -m loadtest.gpu --forward-only`): CUDA memory is freed with it."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .stages import sh


def forward_ceiling(export: Path, device: str, batches: list[int], tokens: int, seconds: float) -> dict:
    import torch

    from service.device.runner import ModelRunner

    # verify_hashes=False: this call's write stage hashed these files as it wrote them (write_export).
    runner = ModelRunner.from_export(export, dtype="bfloat16", device=device, verify_hashes=False)
    ids = [[(7 * i + j) % 1000 + 10 for j in range(tokens)] for i in range(max(batches))]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def measure() -> dict:
        rows = {}
        for b in batches:
            runner.predict(ids[:b])
            runner.predict(ids[:b])
            sync()
            n, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds or n < 3:
                runner.predict(ids[:b])
                n += 1
            elapsed = time.perf_counter() - started
            rows[str(b)] = {"ms": round(1000 * elapsed / n, 2), "seq_per_s": round(b * n / elapsed, 1)}
        return rows

    out = {"eager": measure()}
    if device.startswith("cuda"):
        started = time.perf_counter()
        captured = runner.use_cuda_graphs(max(batches), max(batches) * tokens)
        out["capture_s"] = round(time.perf_counter() - started, 1)
        if captured:
            out["cuda_graphs"] = measure()
    return out


def ceiling_stage(export: Path, device: str, batches: list[int], tokens: int, seconds: float, work: Path,
                  name: str, timeout: float) -> dict:
    text = sh([sys.executable, "-m", "loadtest.gpu", "--forward-only", str(export), "--device", device,
               "--batches", ",".join(map(str, batches)), "--tokens", str(tokens), "--seconds", str(seconds)],
              timeout, work / f"{name}-forward.log")
    return json.loads(text.strip().splitlines()[-1])
