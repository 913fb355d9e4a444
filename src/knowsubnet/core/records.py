"""Typed result files: `Record`, the base of one frozen dataclass per JSON file a stage writes and a
later stage or the report reads (evaluation metrics and headlines, robustness results, CSQA
results). The class that writes a file also reads it, so its shape lives in one place.

Conventions, the same for every record:

- a dataclass field is a JSON key of the same name; a field without a default must be present in
  the file (its value may be null), a field with the default None may be absent and is left out
  when written while None (`_left_out` says which);
- a field whose value is itself typed names its type with `part(T)` (an object), `part(T, "map")`
  ({key: object}), `part(T, "map2")` ({key: {key: object}}) or `part(T, "list")`; every other value
  is kept exactly as read (no conversion: a JSON 10 stays an int, 10.0 a float);
- keys the type does not name are kept in `extra` and written back unchanged;
- `write` goes through `core.io.write_json` (atomic, canonical key order), so a file read and
  written back is the same bytes; `read` raises one InputError naming the file and the key
  (`a.b.c`) that is missing or not an object.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any, ClassVar

from knowsubnet.core.errors import InputError
from knowsubnet.core.io import read_json, write_json

SHAPES = ("one", "map", "map2", "list")


def part(kind: type, shape: str = "one", default: Any = dataclasses.MISSING) -> Any:
    """A field holding a typed part (`kind`, a Record) in `shape` (module doc); `default=None` for
    a part that may be absent."""
    if shape not in SHAPES:
        raise ValueError(f"shape {shape!r}: expected one of {SHAPES}")
    return dataclasses.field(default=default, metadata={"part": kind, "shape": shape})


class Fields:
    """One JSON object of a file, read key by key: each error names the file and the key's path."""

    def __init__(self, data: Any, source: str, what: str, where: str = ""):
        if not isinstance(data, dict):
            raise InputError(
                f"{source}: expected an object at key '{where or '(top level)'}' in {what}, got {type(data).__name__}"
            )
        self.data, self.source, self.what, self.where = data, source, what, where

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def need(self, name: str) -> Any:
        if name not in self.data:
            raise InputError(f"{self.source}: missing key '{self.key(name)}'; expected {self.what}")
        return self.data[name]

    def inner(self, name: str, value: Any) -> Fields:
        return Fields(value, self.source, self.what, self.key(name))


def read_fields(path: str | os.PathLike, what: str) -> Fields:
    """The top-level object of the JSON file `path`; an unreadable file is an InputError naming it."""
    try:
        data = read_json(path)
    except OSError as err:
        raise InputError(f"{path}: cannot read {what} ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); expected {what}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: expected UTF-8 JSON text ({what})") from None
    return Fields(data, str(path), what)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Record:
    """A typed JSON object (module doc). Subclasses are frozen keyword-only dataclasses; `WHAT`
    names the file in error messages."""

    WHAT: ClassVar[str] = "a result file"
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # keys not named here, as read

    # -- reading

    @classmethod
    def read(cls, path: str | os.PathLike):
        """The file at `path` as this type (InputError naming the file and key if malformed)."""
        return cls.from_fields(read_fields(path, cls.WHAT))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "result"):
        """A dict built in memory (a stage's result before it is written) as this type."""
        return cls.from_fields(Fields(dict(data), source, cls.WHAT))

    @classmethod
    def from_fields(cls, obj: Fields):
        values: dict[str, Any] = {}
        names = set()
        for f in dataclasses.fields(cls):
            if f.name == "extra":
                continue
            names.add(f.name)
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if not required and f.name not in obj.data:
                continue
            values[f.name] = _parse(obj, f.name, obj.need(f.name), f.metadata)
        values["extra"] = {k: v for k, v in obj.data.items() if k not in names}
        return cls(**values)

    # -- writing

    def _left_out(self) -> set[str]:
        """Fields not written: the optional ones (default None) that are None."""
        return {
            f.name
            for f in dataclasses.fields(self)
            if f.name != "extra" and f.default is None and getattr(self, f.name) is None
        }

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: the fields in declaration order (less `_left_out`), then `extra`."""
        left_out = self._left_out()
        out = {
            f.name: _plain(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name != "extra" and f.name not in left_out
        }
        out.update(self.extra)
        return out

    def write(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())


def _parse(obj: Fields, name: str, value: Any, metadata: Mapping[str, Any]) -> Any:
    kind, shape = metadata.get("part"), metadata.get("shape")
    if kind is None or value is None:
        return value
    if shape == "one":
        return kind.from_fields(obj.inner(name, value))
    if shape == "list":
        if not isinstance(value, list):
            raise InputError(f"{obj.source}: expected a list at key '{obj.key(name)}' in {obj.what}")
        return [kind.from_fields(obj.inner(f"{name}[{i}]", item)) for i, item in enumerate(value)]
    inner = obj.inner(name, value)  # a map: an object of parts (map2: of maps of parts)
    item_shape = "map" if shape == "map2" else "one"
    return {key: _parse(inner, key, item, {"part": kind, "shape": item_shape}) for key, item in value.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value
