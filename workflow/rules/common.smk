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


class Section(str):
    """Canonical JSON of a params section (what Snakemake compares for `--rerun-triggers params`),
    remembering which key it came from (`workflow/dvc_yaml.py` turns it into a DVC `params:` entry)."""

    key: str


def section(*keys):
    """A params section as a rule's `params:` entry, so that editing it re-runs the rule. A key
    missing from the config reads as null (optional keys; the DVC generator's ${item.x} names)."""
    value = config
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    out = Section(json.dumps(value, sort_keys=True))
    out.key = ".".join(map(str, keys))
    return out


# Hints for the dvc.yaml generator (workflow/dvc_yaml.py); Snakemake ignores them.
DVC_MATRIX = {}  # rule name -> {wildcard: list or ${params.key}} where `run.<wildcard>s` does not apply
def whole_dir(path, directory):
    """`path` is the marker file of a `directory` its rule writes as a whole: DVC tracks the directory."""
    return flag(path, "dvc_dir", directory)


def metrics_file(path):
    """A small JSON of headline numbers: a DVC metric (`dvc metrics show / diff`)."""
    return flag(path, "dvc_metrics")


def plots_file(path, x, y):
    """A CSV to plot (`dvc plots show`)."""
    return flag(path, "dvc_plots", {"x": x, "y": y})


def split_files(target):
    return expand("data/processed/splits/{target}/{kind}_{part}.parquet", target=target,
                  kind=["targetkg", "controlkg"], part=["train", "val", "test"])


def split_summary(target):
    return f"data/processed/splits/{target}/summary.json"
