"""The CPU a run's speed depends on: its model and the features that change which kernels run (vector widths,
native bfloat16), so that every figure can say what it was measured on."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# Vector widths, and native bfloat16 for the convolutions.
CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "f16c")


def machine() -> dict:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux
        lines = []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                 platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return {"cores": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "cpu_features": [feature for feature in CPU_FEATURES if feature in flags]}


def describe(found: dict) -> str:
    """One line for a log: '2 cores, AMD EPYC (avx2, avx512f, avx512_bf16, f16c)'."""
    return f"{found['cores']} cores, {found['cpu']} ({', '.join(found['cpu_features']) or 'no AVX2'})"
