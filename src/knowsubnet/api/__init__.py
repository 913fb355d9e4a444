"""The library and the `knowsubnet` command: your model and your facts, outside the repository.

    from knowsubnet.api import discover
    found = discover("path/to/hf-model", "facts.csv", templates="templates.yaml", out="run")
    found.mask, found.metrics

The top layer: it calls the stages (data, models, method, evaluation) as the pipeline does.
"""

from knowsubnet.api.run import Discovery, Run, build_params, discover

__all__ = ["Discovery", "Run", "build_params", "discover"]
