"""Params: one base with every default, presets as small overlays, typed sections, a bad value
names its key, and params.yaml is what `make params` writes."""

import dataclasses
import importlib.util

import pytest
import yaml
from conftest import REPO_ROOT

from knowsubnet.core import config
from knowsubnet.core.config import deep_merge, load
from knowsubnet.core.errors import InputError

ROOT = REPO_ROOT
SCHEMA = ROOT / "config" / "params.schema.yaml"
BASE = ROOT / "config" / "base.yaml"
PRESETS = sorted((ROOT / "config" / "presets").glob("*.yaml"))
OVERLAYS = sorted((ROOT / "config" / "overlays").glob("*.yaml"))  # <preset>-<what>.yaml


def _params_yaml_module():
    spec = importlib.util.spec_from_file_location("params_yaml", ROOT / "workflow" / "params_yaml.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_presets_exist():
    assert {p.stem for p in PRESETS} >= {"demo", "paper", "relations"}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_is_a_small_overlay_that_types_over_the_base(preset):
    overlay = config.read_yaml(preset)
    base = config.read_yaml(BASE)
    assert set(overlay) < set(base)  # an overlay names a few sections, never a new one
    params = load([BASE, preset], SCHEMA)
    assert isinstance(params.train.batch, config.Batch)
    for target in params.run.targets:
        assert target in params.targets
    for model in params.run.models:
        assert model in params.models


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.stem)
def test_overlay_types_over_its_preset(overlay):
    preset = ROOT / "config" / "presets" / f"{overlay.stem.split('-')[0]}.yaml"
    params = load([BASE, preset, overlay], SCHEMA)
    for target in params.run.targets:
        assert target in params.targets


def test_params_yaml_is_what_make_params_writes():
    committed = (ROOT / "params.yaml").read_text()
    assert committed == _params_yaml_module().render(None), "params.yaml is stale: run `make params`"
    params = load([ROOT / "params.yaml"], SCHEMA)
    assert params.data.mirror == "../shared/data"
    assert params == load([BASE, ROOT / "config" / "mirror-local.yaml"], SCHEMA)


def test_make_params_with_a_preset_equals_the_overlays(tmp_path):
    module = _params_yaml_module()
    out = tmp_path / "params.yaml"
    module.main(["--preset", "demo", "--out", str(out)])
    assert load([out], SCHEMA) == load(
        [BASE, ROOT / "config" / "mirror-local.yaml", ROOT / "config" / "presets" / "demo.yaml"], SCHEMA
    )


def test_make_params_with_an_overlay_merges_it_after_the_preset_and_names_an_unknown_one(tmp_path):
    module = _params_yaml_module()
    out = tmp_path / "params.yaml"
    module.main(["--preset", "demo", "--overlay", "demo-baselines", "--out", str(out)])
    assert load([out], SCHEMA) == load(
        [
            BASE,
            ROOT / "config" / "mirror-local.yaml",
            ROOT / "config" / "presets" / "demo.yaml",
            ROOT / "config" / "overlays" / "demo-baselines.yaml",
        ],
        SCHEMA,
    )
    assert 'OVERLAY="demo-baselines"' in out.read_text().splitlines()[1]
    with pytest.raises(InputError, match="overlays/demo-nothing.yaml: no such preset or overlay"):
        module.main(["--preset", "demo", "--overlay", "demo-nothing", "--out", str(out)])


def test_mirror_only_file_merges_over_a_preset(tmp_path):
    mirror = tmp_path / "mirror.yaml"
    mirror.write_text("data: {mirror: /some/where}\n")
    params = load([BASE, ROOT / "config" / "presets" / "demo.yaml", mirror], SCHEMA)
    assert params.data.mirror == "/some/where"
    assert params.data.verify_checksums is True  # the rest of `data` survives the merge


def test_deep_merge_replaces_lists_and_merges_dicts():
    assert deep_merge({"a": {"b": 1, "c": [1]}}, {"a": {"c": [2]}}) == {"a": {"b": 1, "c": [2]}}


def test_sections_are_frozen_and_the_raw_mapping_is_kept():
    params = load([BASE], SCHEMA)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.train.steps = 3
    assert params.section("train")["batch"]["targetkg"] == params.train.batch.targetkg


@pytest.mark.parametrize(
    "override, key",
    [
        ({"mask": {"granularity": "row"}}, "mask.granularity"),
        ({"split": {"max_targetkg": 0}}, "split.max_targetkg"),
        ({"train": {"lr": -1}}, "train.lr"),
        ({"targets": {"bad": {"rel": "IsAn"}}}, "targets.bad.rel"),
        ({"run": {"seeds": []}}, "run.seeds"),
        ({"triplets": {"sources": ["wikidata"]}}, "triplets.sources.0"),
        ({"eval": {"dtype": "int8"}}, "eval.dtype"),
    ],
)
def test_invalid_value_names_the_key(tmp_path, override, key):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(override))
    with pytest.raises(InputError, match=f"params key '{key}'"):
        load([ROOT / "params.yaml", bad], SCHEMA)


def test_a_missing_key_is_named_with_where_defaults_live():
    mapping = config.read_yaml(BASE)
    del mapping["train"]["select"]["every"]
    with pytest.raises(InputError, match=r"'train\.select\.every' is missing .*config/base\.yaml"):
        config.from_mapping(mapping)


def test_a_key_given_twice_is_an_error(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  steps: 3\n  steps: 4\n")
    with pytest.raises(InputError, match="given twice"):
        load([BASE, twice], SCHEMA)


def test_unreadable_params_file_is_named(tmp_path):
    with pytest.raises(InputError, match="missing.yaml"):
        load([tmp_path / "missing.yaml"], SCHEMA)


@pytest.mark.parametrize("overlay", sorted((ROOT / "config" / "overlays").glob("*.yaml")), ids=lambda p: p.stem)
def test_overlay_validates_over_its_preset(overlay):
    preset = overlay.stem.split("-")[0]  # demo-gpu.yaml overlays demo.yaml
    params = load([BASE, ROOT / "config" / "presets" / f"{preset}.yaml", overlay], SCHEMA)
    for target in params.run.targets:
        assert target in params.targets


def test_export_section_is_typed_and_required():
    params = load([BASE], SCHEMA)
    assert params.export == config.Export(keep="remaining", seeds=[])
    older = config.read_yaml(BASE)
    del older["export"]
    with pytest.raises(InputError, match=r"params key 'export': missing"):
        config.from_mapping(older, SCHEMA)


def test_export_seeds_must_be_run_seeds(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("export: {seeds: [7]}\n")
    with pytest.raises(InputError, match=r"params key 'export\.seeds': seed 7 is not in run\.seeds \[0, 1, 2\]"):
        load([BASE, bad], SCHEMA)
