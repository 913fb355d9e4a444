"""The style is checked, so CI keeps it: `ruff format --check .` and `ruff check .` from the repository
root are clean (the settings: pyproject.toml's [tool.ruff]; locally: `make lint`). Ruff is the one of
the running interpreter's environment (the dev extra, pinned in requirements.lock); without it these
fail rather than skip, so that a CI missing it does not pass unchecked."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

RUFF = Path(sys.executable).parent / "ruff"


def _ruff(*args: str) -> None:
    if not RUFF.is_file():
        pytest.fail(f"ruff is not installed at {RUFF}: run `make setup` (ruff: the dev extra, requirements.lock)")
    proc = subprocess.run([str(RUFF), *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"`ruff {' '.join(args)}` exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"


def test_ruff_format_check_is_clean():
    _ruff("format", "--check", ".")


def test_ruff_check_is_clean():
    _ruff("check", ".")
