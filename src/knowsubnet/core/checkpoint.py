"""Resumable stages: one checkpoint file per stage output, one policy.

A checkpoint is a cache of progress, never an input: it is resumed only when its fingerprint (the
params, a digest of every input that shaped it, and the torch thread count) equals the current one. A checkpoint that
cannot be read, or that was written for other inputs or params, is set aside with one log line
saying why, and the stage starts from scratch. The file is written atomically, so a kill leaves
either the previous checkpoint or the new one.

The state holds plain containers, tensors and numbers only, so that `torch.load(weights_only=True)`
reads it.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch

from knowsubnet.core.io import atomic_path

log = logging.getLogger(__name__)


def _with_threads(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint and this process's torch thread count: it changes a CPU run's bits (the workflow
    runs one thread, a stage run by hand torch's default), so a checkpoint of another count is not resumed."""
    return {**fingerprint, "compute": {"torch_threads": torch.get_num_threads()}}


def save(path: str | Path | None, fingerprint: dict[str, Any], state: dict[str, Any]) -> None:
    if path is None:
        return
    with atomic_path(Path(path)) as tmp:
        torch.save({"fingerprint": _with_threads(fingerprint), "state": state}, tmp)


def load(path: str | Path | None, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The saved state when `path` holds a checkpoint written for `fingerprint`; None otherwise."""
    if path is None or not Path(path).is_file():
        return None
    fingerprint = _with_threads(fingerprint)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        saved_fingerprint, state = saved["fingerprint"], saved["state"]
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, TypeError, pickle.UnpicklingError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        log.warning("%s: unreadable checkpoint (%s); starting from scratch", path, reason)
        return None
    if saved_fingerprint != fingerprint:
        changed = sorted(
            k for k in fingerprint.keys() | saved_fingerprint.keys() if saved_fingerprint.get(k) != fingerprint.get(k)
        )
        log.warning(
            "%s: checkpoint was written for other inputs (changed: %s); starting from scratch", path, ", ".join(changed)
        )
        return None
    return state


def discard(path: str | Path | None) -> None:
    if path is not None:
        Path(path).unlink(missing_ok=True)
