"""What every stage script shares: the `--params` argument and loading the params it names.

Stage scripts run as `python workflow/scripts/<stage>.py`, so this sibling module is importable.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from knowsubnet.core import config
from knowsubnet.core.errors import InputError
from knowsubnet.data import user_facts

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "config" / "params.schema.yaml"


def stage_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser described by the script's docstring, with `--params FILE [FILE ...]`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--params", nargs="+", required=True, help="params YAML files, merged in order")
    return parser


def load_params(args: argparse.Namespace) -> config.Params:
    """The params files of `--params`, merged in order, validated once and typed."""
    params = config.load(args.params, SCHEMA)
    user_facts.register_templates(params.targets)  # your relations' templates, for every stage that verbalises
    if args.params == ["params.yaml"]:  # how dvc.yaml calls every stage (Snakemake passes its own file)
        check_dvc_yaml_is_current(config.merge_files(args.params))
    return params


def check_dvc_yaml_is_current(raw: dict) -> None:
    """dvc.yaml writes out the stages of the `run` it was generated for: a params.yaml with another
    `run` (edited by hand, or `dvc exp run -S run.targets=...`) would run the wrong stages."""
    sys.path.insert(0, str(ROOT / "workflow"))
    from dvc_yaml import RUN_MARK, generated_for

    dvc_yaml = ROOT / "dvc.yaml"
    recorded = next((line[len(RUN_MARK):].strip() for line in dvc_yaml.read_text().splitlines()
                     if line.startswith(RUN_MARK)), None) if dvc_yaml.exists() else None
    if recorded is not None and recorded != generated_for(raw):
        raise InputError(f"dvc.yaml was generated for {recorded}, but params.yaml has {generated_for(raw)}: "
                          f"run `make dvc.yaml` (or `make params`) to regenerate it, then `dvc repro`")
