"""docs/PAPER.md: every row's param exists in the schema, holds the stated values in the paper preset
and in params.yaml, and is read by the library or the workflow; the paper preset's DAG is exactly
the paper's 10 targets x 3 seeds x 4 models."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT

from knowsubnet.core.config import deep_merge

ROOT = REPO_ROOT
CODE = [
    *sorted((ROOT / "src" / "knowsubnet").rglob("*.py")),
    *sorted((ROOT / "workflow" / "rules").glob("*.smk")),
    ROOT / "Snakefile",
]
ABSENT = "—"  # the param is not set in that file
PAPER_TARGETS = {
    "building",
    "change",
    "communication",
    "location",
    "magnitude",
    "representation",
    "statement",
    "fruit",
    "sun",
    "swimming",
}


def table_rows() -> list[dict[str, str]]:
    text = (ROOT / "docs" / "PAPER.md").read_text()
    table = text.split("\n\n| Area |", 1)[1].split("\n\n", 1)[0]
    lines = ("| Area |" + table).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        assert len(cells) == len(header), line
        rows.append(dict(zip(header, cells)))
    return rows


def unquote(cell: str) -> str:
    match = re.fullmatch(r"`([^`]*)`", cell)
    assert match or cell == ABSENT, f"expected `value` or {ABSENT}, got {cell!r}"
    return match.group(1) if match else ABSENT


def lookup(params: dict, key: str):
    value = params
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return ABSENT
        value = value[part]
    return value


def schema_has(schema: dict, key: str) -> bool:
    node = schema
    for part in key.split("."):
        props = node.get("properties", {})
        if part in props:
            node = props[part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return False
    return True


def read_in_code(key: str) -> list[str]:
    """Code files that read the key: as an attribute of the typed params (`params.train.steps`,
    `settings.steps`), or by name (`section("train")` in a rule, `spec.get("depth")` in a module that
    names the section, e.g. `targets.<name>`)."""
    parts = key.split(".")
    section, leaf = parts[0], parts[-1]

    def quoted(word: str) -> re.Pattern[str]:
        return re.compile(rf"""["']{re.escape(word)}["']""")

    attribute = re.compile(rf"\.{re.escape(leaf)}\b")
    return [
        path.name
        for path in CODE
        if attribute.search(text := path.read_text())
        or ((quoted(section).search(text) or f"{section}." in text) and quoted(leaf).search(text))
    ]


ROWS = table_rows()


def test_the_table_covers_data_objective_schedule_evaluation():
    assert {row["Area"] for row in ROWS} == {"data", "objective", "schedule", "evaluation"}
    assert len(ROWS) >= 25


@pytest.mark.parametrize("row", ROWS, ids=[row["Param"] for row in ROWS])
def test_every_row_names_a_param_that_is_set_and_read(row):
    key = unquote(row["Param"])
    schema = yaml.safe_load((ROOT / "config" / "params.schema.yaml").read_text())
    assert schema_has(schema, key), f"{key} is not in config/params.schema.yaml"
    base = yaml.safe_load((ROOT / "config" / "base.yaml").read_text())
    paper = deep_merge(base, yaml.safe_load((ROOT / "config" / "presets" / "paper.yaml").read_text()))
    for column, file, params in (
        ("paper.yaml", "config/base.yaml + config/presets/paper.yaml", paper),
        ("params.yaml", "params.yaml", yaml.safe_load((ROOT / "params.yaml").read_text())),
    ):
        stated = unquote(row[column])
        actual = lookup(params, key)
        expected = stated if stated == ABSENT else yaml.safe_load(stated)
        assert actual == expected, f"{key} in {file}: the table says {stated}, the file has {actual!r}"
    assert read_in_code(key), f"{key}: no library, script or rule reads it"


def test_paper_preset_dry_run_is_ten_targets_three_seeds_four_models():
    out = subprocess.run(
        [Path(sys.executable).parent / "snakemake", "-n", "--configfile", "config/presets/paper.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    text = out.stdout + out.stderr
    jobs = re.search(r"^discover_mask\s+(\d+)$", text, re.M)
    assert jobs and int(jobs.group(1)) == 120
    runs = set(re.findall(r"results/masks/([\w.-]+)/([\w.-]+)/seed(\d+)/mask\.safetensors", text))
    assert {t for _, t, _ in runs} == PAPER_TARGETS
    assert {m for m, _, _ in runs} == {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"}
    assert {s for _, _, s in runs} == {"0", "1", "2"} and len(runs) == 120
