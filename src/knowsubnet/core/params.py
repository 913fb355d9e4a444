"""Load params files (deep-merged in order) and validate them against the JSON schema."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml

from knowsubnet.core.errors import InputError


def deep_merge(base: dict, override: dict) -> dict:
    """Merge `override` into a copy of `base`; nested dicts merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as err:
        raise InputError(f"{path}: cannot read params file ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of params at the top level")
    return data


def validate(params: dict, schema_path: str | Path, source: str = "params") -> dict:
    """Validate against the schema (filling defaults is left to the schema's users); return params."""
    schema = read_yaml(schema_path)
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise InputError(f"{source}: invalid value for params key '{key}': {err.message}")
    return params


def load(paths: Iterable[str | Path], schema_path: str | Path) -> dict[str, Any]:
    """Read each params file, merge them in order, validate the result."""
    paths = list(paths)
    merged: dict[str, Any] = {}
    for path in paths:
        merged = deep_merge(merged, read_yaml(path))
    return validate(merged, schema_path, source=" + ".join(str(p) for p in paths))
