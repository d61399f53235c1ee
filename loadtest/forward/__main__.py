"""Forward-pass measurements, one mode each (`python -m loadtest.forward MODE --help` for its flags):

    python -m loadtest.forward profile --export exports/cb --tokens 64             # stage by stage, per batch size
    python -m loadtest.forward packing --export exports/esnli-bench --split train  # packed vs padded passes
    python -m loadtest.forward attention --layers 4 --seconds 0.5                   # CPU kernels of a packed pass
    python -m loadtest.forward roofline --export exports/cb --tokens 64            # the compute ceiling
    python -m loadtest.forward int8 --export exports/esnli-bench --split val       # int8 against float passes
    python -m loadtest.forward heap --tokens 2048                                   # the heap setting, on and off
"""
from __future__ import annotations

from loadtest.modes import dispatch

MODES = {
    "profile": ("loadtest.forward.passes", "where a /classify request's time goes, stage by stage, per batch size"),
    "packing": ("loadtest.forward.packing", "packed against padded forward passes on a task's own inputs"),
    "attention": ("loadtest.forward.attention", "packed vs padded passes, and which CPU attention kernel a packed "
                                                "pass should use"),
    "roofline": ("loadtest.forward.roofline", "measured matmul GFLOP/s and the model's FLOPs per sequence"),
    "int8": ("loadtest.forward.int8", "int8 against float forward passes: answers kept, batch invariance, speed"),
    "heap": ("loadtest.forward.heap", "one projection, bf16 and int8, with glibc's default heap and with freed "
                                      "blocks kept (service/device/cpu_heap.py)"),
}

if __name__ == "__main__":
    from service.device.cpu_heap import keep_freed_memory

    keep_freed_memory()  # the heap a CPU engine serves with, so passes are timed as served
    raise SystemExit(dispatch("loadtest.forward", __doc__, MODES))
