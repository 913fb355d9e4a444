"""The library and the `knowsubnet` command: your model and your facts, outside the repository.

    from knowsubnet.api import discover
    found = discover("path/to/hf-model", "facts.csv", templates="templates.yaml", out="run")
    found.mask, found.metrics

The top layer: it calls the stages (data, models, method, evaluation) as the pipeline does
(api.run), and declares them as `knowsubnet <stage>` commands (api.stages).
"""

import importlib

__all__ = ["Discovery", "Run", "build_params", "discover"]


def __getattr__(name: str):
    """`from knowsubnet.api import discover` imports api.run (and torch) on first use, not when
    the package is: the stage commands and the Snakefile import api.stages, which needs neither. By
    name, so dvc.yaml's deps (workflow/dvc_yaml.py follows import statements) do not take api.run."""
    if name in __all__:
        return getattr(importlib.import_module("knowsubnet.api.run"), name)
    raise AttributeError(f"module 'knowsubnet.api' has no attribute {name!r}")
