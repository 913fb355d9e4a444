"""Atomic file output, checksums and small JSON / parquet / safetensors helpers.

Every artifact is written to a temporary name in the same folder and renamed into place, so a
killed job never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from knowsubnet.core.errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    Works for files and for directories (write a directory at the yielded path).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """`obj` as canonical JSON (`canonical_json`), so the same content is the same bytes whichever
    engine (DVC, Snakemake) or code path built the dict."""
    write_text(path, canonical_json(obj))


def canonical_json(obj: Any) -> str:
    """JSON text independent of dict insertion order: keys as JSON writes them (strings), sorted,
    integer keys in numeric order before the others (logit-lens blocks 6 ... 11, not 10, 11, 6 ...);
    indented by 2, one trailing newline."""
    plain = json.loads(json.dumps(obj, default=_json_default))  # keys become JSON's strings
    return json.dumps(_sorted_keys(plain), indent=2) + "\n"


def _key_order(key: str) -> tuple[int, int, str]:
    return (0, int(key), key) if key.isascii() and key.isdigit() else (1, 0, key)


def _sorted_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted_keys(value[key]) for key in sorted(value, key=_key_order)}
    if isinstance(value, list):
        return [_sorted_keys(item) for item in value]
    return value


def write_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> None:
    """Tensors as a safetensors file, its header's metadata in sorted key order. The library keeps
    metadata in a hash map whose order changes from save to save, so two identical runs would
    otherwise write files that differ in their header bytes."""
    from safetensors.torch import save

    data = save(tensors, metadata={k: str(v) for k, v in (metadata or {}).items()})
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes with spaces
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        f.write(memoryview(data)[8 + n :])  # the tensors as they are: no copy of a mask's 84 MB


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_parquet(path: str | os.PathLike, frame) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def open_text(path: str | os.PathLike, what: str = "the file"):
    """`path` opened as UTF-8 text; an unreadable path is an InputError naming it."""
    try:
        return open(path, encoding="utf-8")
    except OSError as err:
        raise InputError(f"{path}: cannot read {what} ({err.strerror})") from None


def jsonl_rows(path: str | os.PathLike, what: str = "a JSON object") -> Iterator[tuple[str, int, Any]]:
    """(where "path:line", line number, parsed object) per non-blank line of a jsonl file; a bad
    line or encoding stops with an InputError naming the file and line."""
    path = Path(path)
    with open_text(path) as f:
        lineno = 0
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise InputError(
                        f"{where}: expected {what}, got invalid JSON ({err.msg} at column {err.colno})"
                    ) from None
                yield where, lineno, row
        except UnicodeDecodeError:
            raise InputError(f"{path}:{lineno + 1}: expected UTF-8 text") from None


def _json_default(obj: Any) -> Any:
    # numpy scalars and paths appear in metrics; make them plain JSON.
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_text(path: str | os.PathLike) -> str:
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the text ({err})") from None


def readable(path: str | Path) -> None:
    """Give a file (or every file under a folder) the usual 0644-minus-umask permissions.

    safetensors and transformers write some files 0600; results are shared between users/jobs.
    """
    umask = os.umask(0)
    os.umask(umask)
    path = Path(path)
    for item in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
        os.chmod(item, 0o666 & ~umask)
