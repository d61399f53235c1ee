"""The C heap under a CPU forward pass: keep freed tensor memory for the next pass.

A forward pass allocates and frees tensors of megabytes: a packed batch of 2,048 tokens gives 12 MB
int32 matmul outputs in the int8 path. glibc serves a block that large with mmap and returns it to the
kernel when freed, so the next pass takes fresh pages: a page fault and a page of zeroes for every 4 KiB
it touches. Measured on one projection of a packed pass (2048 x 576 -> 1536, 2 threads, idle 2-core AMD
EPYC with AVX-512; `python -m loadtest.forward heap`): int8 16.0 ms a call with glibc's defaults, 4.3 ms
with the blocks kept; bf16 4.6 and 4.3 ms (BENCHMARKS.md, "Int8, third piece"). Raising glibc's mmap
threshold to its largest (32 MiB) takes such blocks from the heap, which keeps them when freed, and the
trim threshold keeps up to 256 MiB of free heap top rather than handing it back: a serving process's RSS
holds at its peak, which is what a server sized for its peak expects (PyTorch's CPU tuning guides get the
same by preloading jemalloc or tcmalloc; this needs no library).
"""
from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("dhrd.engine")

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 * 2**20  # glibc's ceiling for it on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 256 * 2**20


def keep_freed_memory() -> bool:
    """Set the two thresholds for this whole process; True when glibc took them (elsewhere: no-op)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): its allocator, its behaviour
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not done:
        log.warning("mallopt refused the heap thresholds; forward passes will page-fault on large tensors")
    return done
