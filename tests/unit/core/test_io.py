"""write_json is canonical: the same content gives the same bytes whatever order its dicts were
built in (DVC and Snakemake build params dicts in different orders; docs/ARCHITECTURE.md)."""

import json

import numpy as np

from knowsubnet.core.io import canonical_json, write_json


def test_write_json_bytes_do_not_depend_on_insertion_order(tmp_path):
    one = {
        "train": {"steps": 10, "lr": 0.2},
        "model": "m",
        "blocks": {11: 1.5, 6: 2.0, 10: 0.5},
        "rows": [{"b": 1, "a": np.float64(0.25)}],
        "none": None,
    }
    other = {
        "none": None,
        "rows": [{"a": 0.25, "b": 1}],
        "blocks": {"6": 2.0, 10: 0.5, "11": 1.5},
        "model": "m",
        "train": {"lr": 0.2, "steps": 10},
    }
    write_json(tmp_path / "one.json", one)
    write_json(tmp_path / "other.json", other)
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "other.json").read_bytes()
    text = (tmp_path / "one.json").read_text()
    assert json.loads(text) == json.loads(json.dumps(one, default=float))  # the content is unchanged
    assert list(json.loads(text)) == ["blocks", "model", "none", "rows", "train"]
    assert list(json.loads(text)["blocks"]) == ["6", "10", "11"]  # integer keys in numeric order
    assert list(json.loads(text)["rows"][0]) == ["a", "b"] and text.endswith("}\n")


def test_canonical_json_puts_integer_keys_before_the_others():
    assert list(json.loads(canonical_json({"none": 0, "8": 1, "4": 2}))) == ["4", "8", "none"]
