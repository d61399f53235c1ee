"""The CPU at hand, read from /proc/cpuinfo: its model name, the flags our speed depends on, and a short
name for its kind. One reader for the reports (loadtest.provenance) and for the service's int8 gate check,
which holds per kind of CPU (contract/int8.py)."""
from __future__ import annotations

import platform
from pathlib import Path

# The CPU flags our speed depends on: AVX2/FMA (fp32 matmuls), AVX-512 and its BF16/VNNI extensions and
# AMX (bf16 and int8 in hardware; without them PyTorch emulates bf16 and `auto` picks fp32).
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")


def cpuinfo() -> list[str]:
    """/proc/cpuinfo's lines; none where there is no such file (not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpuinfo_field(lines: list[str], name: str) -> str | None:
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == name), None)


def cpu_name(lines: list[str] | None = None) -> str:
    return cpuinfo_field(cpuinfo() if lines is None else lines, "model name") or platform.processor() or "unknown"


def cpu_flags(lines: list[str] | None = None) -> dict[str, bool]:
    """Each of CPU_FLAGS: present (True) or absent (False) on this CPU, as /proc/cpuinfo lists them."""
    have = set((cpuinfo_field(cpuinfo() if lines is None else lines, "flags") or "").split())
    return {flag: flag in have for flag in CPU_FLAGS}


def cpu_kind(name: str | None = None, flags: dict[str, bool] | None = None) -> str:
    """A short file-name-safe name for the kind of CPU: its model name and the best of the flags our speed
    depends on, e.g. `amd-epyc-avx512-bf16` or `amd-epyc-avx2` (one model name covers CPUs with and
    without AVX-512, so the name alone does not say which kind a measurement ran on)."""
    name = cpu_name() if name is None else name
    flags = cpu_flags() if flags is None else flags
    best = next((label for flag, label in (("amx_int8", "amx"), ("avx512_bf16", "avx512-bf16"),
                                           ("avx512f", "avx512"), ("avx2", "avx2")) if flags.get(flag)), "no-avx2")
    slug = "".join(c if c.isalnum() else "-" for c in name.lower())
    slug = "-".join(part for part in slug.split("-") if part and part not in ("processor", "r", "tm"))
    return f"{slug or 'unknown'}-{best}"
