"""Process memory: resident size now and at peak (logged every step), and returning freed heap to the OS."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import lru_cache
from pathlib import Path


def rss_mb() -> float:
    """Resident memory of this process now (Linux /proc; 0 elsewhere), logged to follow its growth."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (getrusage reports KiB on Linux; it is sampled by the
    kernel, so it can trail the current reading by a little: the larger of the two)."""
    import resource

    return max(round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), rss_mb())


@lru_cache(maxsize=1)
def _libc_trim():
    """glibc's malloc_trim, or None (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the OS (glibc `malloc_trim(0)`). CPU training allocates
    activations of a different shape every batch; glibc keeps the freed blocks in its arenas, so the
    resident size ratchets up although nothing is leaked. Returns False where unavailable."""
    trim = _libc_trim()
    if trim is None:
        return False
    trim(0)
    return True
