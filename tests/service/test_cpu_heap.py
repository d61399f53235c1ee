"""A CPU serving process keeps freed tensor memory in its heap (service/device/cpu_heap.py), so the next
forward pass does not page-fault through fresh memory."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# In a fresh interpreter: mallopt is process-wide and one-way. Each run allocates and frees a 12 MB tensor
# (a packed pass's int8 matmul output) and reports how much free memory glibc's heaps then hold.
PROBE = textwrap.dedent("""
    import ctypes, sys, torch
    from service.device.cpu_heap import keep_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    if not hasattr(libc, "mallinfo2"):  # glibc < 2.33
        print("skip skip")
        raise SystemExit(0)
    libc.mallinfo2.restype = MallInfo2
    applied = keep_freed_memory() if sys.argv[1] == "keep" else None
    before = libc.mallinfo2().fordblks
    x = torch.ones(3 * 2**20, dtype=torch.int32)  # 12 MiB
    del x
    print(applied, libc.mallinfo2().fordblks - before)
""")


def free_heap_after_a_12mb_tensor(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    applied, kept = out.stdout.split()
    if kept == "skip":
        pytest.skip("this glibc has no mallinfo2 to read the heap with")
    return applied, int(kept)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensor_memory_stays_in_the_heap_for_the_next_pass():
    applied, kept = free_heap_after_a_12mb_tensor("keep")
    assert applied == "True"
    assert kept >= 12 * 2**20  # the freed block is free heap, ready for the next pass


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_without_it_glibc_hands_a_large_block_back_to_the_kernel():
    """Why it is needed: by default the block is mmap'ed and unmapped when freed (the baseline the
    test above would fail against)."""
    applied, kept = free_heap_after_a_12mb_tensor("default")
    assert applied == "None" and kept < 2**20
