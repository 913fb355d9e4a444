# Shared by every rule: the effective params file handed to scripts, and the run's wildcards.
import hashlib
import json
import re
import sys
from pathlib import Path

import yaml

PY = sys.executable  # the interpreter running Snakemake: the project's virtual environment


def _effective_params_file():
    """Write Snakemake's merged config once, content-addressed, so scripts see exactly it."""
    text = yaml.safe_dump(config, sort_keys=True)
    path = Path(".knowsubnet") / f"params-{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return str(path)


PARAMS = _effective_params_file()
MODELS = config["run"]["models"]
TARGETS = config["run"]["targets"]
SEEDS = config["run"]["seeds"]
COMBINATIONS = ["union", "intersection", "majority"]  # of a target's seed masks

for _target in TARGETS:
    if _target not in config["targets"]:
        raise ValueError(f"params key 'run.targets': '{_target}' is not defined under 'targets'")
for _model in MODELS:
    if _model not in config["models"]:
        raise ValueError(f"params key 'run.models': '{_model}' is not defined under 'models'")

wildcard_constraints:
    model="|".join(map(re.escape, config["models"])),
    target="|".join(map(re.escape, config["targets"])),
    seed=r"\d+",


def section(*keys):
    """A params section as canonical JSON: a rule's `params:` entry, so editing it re-runs the rule."""
    value = config
    for key in keys:
        value = value[key]
    return json.dumps(value, sort_keys=True)


def split_files(target):
    return expand("data/processed/splits/{target}/{kind}_{part}.parquet", target=target,
                  kind=["targetkg", "controlkg"], part=["train", "val", "test"])
