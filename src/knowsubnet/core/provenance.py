"""What produced an artifact: code version, library versions, parameters."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

from knowsubnet import __version__


def code_version() -> str:
    """Package version plus the git commit of the source tree (with '+dirty' if modified)."""
    src = Path(__file__).resolve().parents[1]  # the whole package, not only core/
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=src, capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=src, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return f"{__version__}+g{sha}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def environment() -> dict[str, str]:
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__}


def stamp(params: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The provenance block every artifact's JSON carries."""
    out: dict[str, Any] = {"code_version": code_version(), "environment": environment()}
    if params is not None:
        out["params"] = params
    out.update(extra)
    return out
