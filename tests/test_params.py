"""Params files: presets validate, merging works, a bad value names its key."""

from pathlib import Path

import pytest
import yaml

from knowsubnet.core.errors import InputError
from knowsubnet.core.params import deep_merge, load

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "config" / "params.schema.yaml"
PRESETS = sorted((ROOT / "config" / "presets").glob("*.yaml"))


def test_presets_exist():
    assert {p.stem for p in PRESETS} >= {"tiny", "demo", "paper"}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_is_a_whole_valid_params_file(preset):
    params = load([preset], SCHEMA)
    for target in params["run"]["targets"]:
        assert target in params["targets"]
    for model in params["run"]["models"]:
        assert model in params["models"]


def test_params_yaml_is_the_tiny_preset_with_the_mirror():
    default = yaml.safe_load((ROOT / "params.yaml").read_text())
    tiny = yaml.safe_load((ROOT / "config" / "presets" / "tiny.yaml").read_text())
    assert default["data"]["mirror"] == "../shared/data"
    default["data"]["mirror"] = tiny["data"]["mirror"]
    assert default == tiny


def test_mirror_only_file_merges_over_a_preset(tmp_path):
    mirror = tmp_path / "mirror.yaml"
    mirror.write_text("data: {mirror: /some/where}\n")
    params = load([ROOT / "config" / "presets" / "tiny.yaml", mirror], SCHEMA)
    assert params["data"]["mirror"] == "/some/where"
    assert params["data"]["verify_checksums"] is True  # the rest of `data` survives the merge


def test_deep_merge_replaces_lists_and_merges_dicts():
    assert deep_merge({"a": {"b": 1, "c": [1]}}, {"a": {"c": [2]}}) == {"a": {"b": 1, "c": [2]}}


@pytest.mark.parametrize(
    "override, key",
    [
        ({"mask": {"granularity": "row"}}, "mask.granularity"),
        ({"split": {"max_targetkg": 0}}, "split.max_targetkg"),
        ({"train": {"lr": -1}}, "train.lr"),
        ({"targets": {"bad": {"rel": "IsAn"}}}, "targets.bad.rel"),
        ({"run": {"seeds": []}}, "run.seeds"),
        ({"triplets": {"sources": ["wikidata"]}}, "triplets.sources.0"),
    ],
)
def test_invalid_value_names_the_key(tmp_path, override, key):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(override))
    with pytest.raises(InputError, match=f"params key '{key}'"):
        load([ROOT / "params.yaml", bad], SCHEMA)


def test_unreadable_params_file_is_named(tmp_path):
    with pytest.raises(InputError, match="missing.yaml"):
        load([tmp_path / "missing.yaml"], SCHEMA)


@pytest.mark.parametrize("overlay", sorted((ROOT / "config" / "overlays").glob("*.yaml")), ids=lambda p: p.stem)
def test_overlay_validates_over_its_preset(overlay):
    preset = overlay.stem.split("-")[0]  # demo-gpu.yaml overlays demo.yaml
    params = load([ROOT / "config" / "presets" / f"{preset}.yaml", overlay], SCHEMA)
    for target in params["run"]["targets"]:
        assert target in params["targets"]
