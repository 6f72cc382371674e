"""A description of the CPU the check ran on (model, cores, ISA features that steer kernels)."""

from __future__ import annotations

import os
import platform

# Features that decide which int8/fp32 kernels the runtimes pick.
INTERESTING = (
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
    "sve2",
    "bf16",
    "fphp",
    "asimdhp",
)


def describe_cpu(cpuinfo_path: str = "/proc/cpuinfo") -> dict:
    model, flags, part = platform.processor() or "", set(), None
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware") and not model:
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
                elif key == "cpu part" and part is None:
                    part = value.strip()
    except OSError:
        pass
    return {
        "machine": platform.machine(),
        "model": model or platform.machine(),
        "cpu_part": part,
        "cores": os.cpu_count(),
        "features": sorted(f for f in flags if f in INTERESTING),
    }
