"""Fixtures shared by the data-layer tests (relations, fetch, triplets, splits)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def shared_data_mirror() -> Path:
    """The local data mirror beside the project (../shared/data); tests needing it skip without."""
    mirror = REPO_ROOT.parent / "shared" / "data"
    if not (mirror / "README.md").is_file():
        pytest.skip(f"no local data mirror at {mirror}")
    return mirror


@pytest.fixture
def repo_facts_table() -> Path:
    """The in-repo facts table (the 'builtin' source)."""
    return REPO_ROOT / "data" / "facts" / "conceptnet_facts.tsv"
