"""The removal methods, each declared once: its name (the `{baseline}` wildcard, `run.baselines`,
`baselines.<name>` params, a sweep point's `method`), its label in the report, its kind, and the
function that fits it. The rules (workflow/rules/*.smk), the report and the params check read their
lists from here; `baselines.run_baseline` dispatches through `fit`.

Kinds (what a method needs and what it writes):

- `mask`: the learned mask, its own stage (`discover.discover_mask`, rule discover_mask);
- `sized_by_mask`: no training; removes as many weights as the seed's learned mask, so it reads
  that mask (rule prune_baseline); its edit is a mask;
- `finetuning`: trains the masked layers' weights on the same training data (rule
  unlearn_baseline); its edit is new weights.

A baseline's `fit` takes a `baselines.FitInputs` and returns a `baselines.Fitted` (the edit, its
validation curve and what was chosen on validation); `run_baseline` loads the inputs, writes the
edit and meta.json. Order of registration is the report's order: the reference first, then the
baselines from simplest to finetuning.

This module imports no torch: the Snakefile imports it to build its rules. `fit` is therefore a
"module:function" reference, imported when a method runs (`fit_function`), as entry points are.
The fits live in `method.baselines`, which the remove_baseline script imports: DVC's dependency
scan (workflow/dvc_yaml.py follows imports, not these strings) then covers them.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

MASK, SIZED_BY_MASK, FINETUNING = "mask", "sized_by_mask", "finetuning"
KINDS = (MASK, SIZED_BY_MASK, FINETUNING)


@dataclasses.dataclass(frozen=True)
class RemovalMethod:
    name: str
    label: str  # its name in the report's tables and legends
    kind: str  # one of KINDS
    fit: str | None  # "module:function" (`fit_function`); None for the mask, which has its own stage


_REGISTRY: dict[str, RemovalMethod] = {}


def register(method: RemovalMethod) -> RemovalMethod:
    """Add `method` (names are unique; `kind` one of KINDS; a baseline has a `fit`)."""
    if method.name in _REGISTRY:
        raise ValueError(f"removal method {method.name!r} is registered twice")
    if method.kind not in KINDS:
        raise ValueError(f"removal method {method.name!r}: kind {method.kind!r}, expected one of {', '.join(KINDS)}")
    if (method.fit is None) != (method.kind == MASK):
        raise ValueError(f"removal method {method.name!r}: a baseline needs a fit, the mask has its own stage")
    _REGISTRY[method.name] = method
    return method


def get(name: str) -> RemovalMethod:
    if name not in _REGISTRY:
        raise KeyError(f"removal method {name!r}: expected one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def names(*kinds: str) -> list[str]:
    """The registered names of `kinds` (every kind when none), in registration order."""
    return [m.name for m in _REGISTRY.values() if not kinds or m.kind in kinds]


def baselines() -> list[str]:
    """The methods `run.baselines` may list: every one but the learned mask."""
    return names(SIZED_BY_MASK, FINETUNING)


def labels() -> dict[str, str]:
    return {m.name: m.label for m in _REGISTRY.values()}


def fit_function(name: str) -> Callable:
    """The method's fit, imported now (the rules never call it, so they never import torch)."""
    method = get(name)
    if method.fit is None:
        raise ValueError(f"removal method {name!r} runs as its own stage (discover_mask), not through a fit")
    module, function = method.fit.split(":")
    return getattr(importlib.import_module(module), function)


# The methods. A new one: one line here, its params section (docs/ARCHITECTURE.md, "A removal method").
register(RemovalMethod("mask", "learned mask", MASK, None))
register(
    RemovalMethod(
        "random_magnitude",
        "random (magnitude-matched)",
        SIZED_BY_MASK,
        "knowsubnet.method.baselines:fit_random_magnitude",
    )
)
register(
    RemovalMethod("attribution", "attribution pruning", SIZED_BY_MASK, "knowsubnet.method.baselines:fit_attribution")
)
register(RemovalMethod("neurons", "knowledge neurons", SIZED_BY_MASK, "knowsubnet.method.baselines:fit_neurons"))
register(RemovalMethod("graddiff", "GradDiff", FINETUNING, "knowsubnet.method.baselines:fit_unlearning"))
register(RemovalMethod("npo", "NPO", FINETUNING, "knowsubnet.method.baselines:fit_unlearning"))
register(RemovalMethod("rmu", "RMU", FINETUNING, "knowsubnet.method.baselines:fit_unlearning"))
