"""What produced an artifact: code version, library versions, parameters."""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

from knowsubnet import __version__


def code_version() -> str:
    """Package version plus the git commit of the source tree (with '+dirty' if modified)."""
    src = Path(__file__).resolve().parents[1]  # the whole package, not only core/
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=src, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "."], cwd=src, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return f"{__version__}+g{sha}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # the CPU multiplies bf16 natively (models.precision)


@lru_cache(maxsize=1)
def cpuinfo() -> dict[str, str]:
    """The first processor's fields in Linux /proc/cpuinfo; empty where that file is absent."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():  # the first processor's block ends here
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags; empty where /proc/cpuinfo is absent."""
    return frozenset(cpuinfo().get("flags", "").split())


def cpu_bf16_flags() -> list[str]:
    """Which of the native-bf16 flags this CPU reports (empty: bf16 would be emulated)."""
    return [flag for flag in BF16_CPU_FLAGS if flag in cpu_flags()]


def environment() -> dict[str, str]:
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": platform.machine(),
        # CPU runs are bit-identical per seed on one CPU model; another model's kernels round differently
        "cpu": cpuinfo().get("model name", platform.processor() or "unknown"),
        "cpu_bf16": ",".join(cpu_bf16_flags()) or "none",
    }


def stamp(params: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The provenance block every artifact's JSON carries."""
    out: dict[str, Any] = {"code_version": code_version(), "environment": environment()}
    if params is not None:
        out["params"] = params
    out.update(extra)
    return out
