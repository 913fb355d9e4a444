"""What every stage script shares: the `--params` argument and loading the params it names.

Stage scripts run as `python workflow/scripts/<stage>.py`, so this sibling module is importable.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from knowsubnet.core import config

SCHEMA = Path(__file__).resolve().parents[2] / "config" / "params.schema.yaml"


def stage_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser described by the script's docstring, with `--params FILE [FILE ...]`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--params", nargs="+", required=True, help="params YAML files, merged in order")
    return parser


def load_params(args: argparse.Namespace) -> config.Params:
    """The params files of `--params`, merged in order, validated once and typed."""
    return config.load(args.params, SCHEMA)
