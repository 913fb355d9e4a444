"""One JSON-schema error as one line that names its params key and what it expects (never the
schema itself): `core.config.validate` raises it."""

from __future__ import annotations

from typing import Any

import jsonschema


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _expected(err: jsonschema.ValidationError) -> str:
    """What one schema error wants, in words (jsonschema's own message for the plain checks)."""
    if err.validator == "type":
        types = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
        return f"expected {' or '.join(types)}, got {_short(err.instance)}"
    if err.validator == "enum":
        return f"{_short(err.instance)} is not allowed; expected one of: {', '.join(map(str, err.validator_value))}"
    if err.validator == "required" and isinstance(err.instance, dict):
        return f"needs key {next(n for n in err.validator_value if n not in err.instance)!r}"
    if err.validator in ("oneOf", "anyOf"):
        # Alternatives that each failed one plain check (number or null, ...): list them; the
        # target forms fail deeper, and their schema would be a dump: point at their documentation.
        alternatives: dict[Any, list] = {}
        for sub in err.context:
            alternatives.setdefault(sub.schema_path[0], []).append(sub)
        plain = [
            subs[0]
            for subs in alternatives.values()
            if len(subs) == 1 and not subs[0].relative_path and subs[0].validator not in _NESTED
        ]
        if not err.context:
            return f"{_short(err.instance)} fits more than one of the allowed forms (see config/base.yaml)"
        if len(plain) == len(alternatives):
            if all(sub.validator == "type" for sub in plain):
                return f"expected {' or '.join(str(sub.validator_value) for sub in plain)}, got {_short(err.instance)}"
            return f"{_short(err.instance)} is not allowed: " + "; or ".join(_expected(sub) for sub in plain)
    if err.validator in _NESTED:
        return f"{_short(err.instance)} is not one of the allowed forms (see the comments in config/base.yaml)"
    return err.message


_NESTED = {"oneOf", "anyOf", "allOf", "not", "if", "then", "else"}  # their messages repr the schema


def error_line(err: jsonschema.ValidationError) -> str:
    path = [str(p) for p in err.absolute_path]
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        valid = sorted(err.schema.get("properties", {}))
        unknown = sorted(set(map(str, err.instance)) - set(valid))
        if unknown and valid:
            return f"params key '{'.'.join(path + unknown[:1])}': unknown; valid keys here: {', '.join(valid)}"
    if err.validator == "required" and isinstance(err.instance, dict):
        missing = [name for name in err.validator_value if name not in err.instance]
        return f"params key '{'.'.join(path + missing[:1])}': missing (every key has its default in config/base.yaml)"
    return f"params key '{'.'.join(path) or '(top level)'}': {_expected(err)}"
