"""The registry of removal methods: the one list the rules, the report and the params read, and
checks that the params files (schema, documented defaults, typed sections) agree with it."""

import dataclasses
import subprocess
import sys

import pytest
import yaml
from conftest import REPO_ROOT

from knowsubnet.core import config as params_config
from knowsubnet.method import registry

SCHEMA = REPO_ROOT / "config" / "params.schema.yaml"
BASE = REPO_ROOT / "config" / "base.yaml"


def test_every_method_once_in_the_report_order_with_a_label_and_a_kind():
    # the reference first, then the baselines (a new one adds to these lists)
    assert registry.names(registry.MASK) == ["mask"] and registry.names()[0] == "mask"
    assert registry.names(registry.SIZED_BY_MASK)[:3] == ["random_magnitude", "attribution", "neurons"]
    assert registry.names(registry.FINETUNING)[:3] == ["graddiff", "npo", "rmu"]
    assert registry.baselines() == registry.names()[1:]
    assert sorted(registry.names()) == sorted(registry.names(*registry.KINDS))
    assert set(registry.labels()) == set(registry.names()) and all(registry.labels().values())


def test_every_baseline_fits_through_a_function_of_the_method_layer():
    for name in registry.baselines():
        fit = registry.fit_function(name)
        assert callable(fit) and fit.__module__.startswith("knowsubnet.method."), name
    with pytest.raises(ValueError, match="own stage"):
        registry.fit_function("mask")
    with pytest.raises(KeyError, match="expected one of mask, random_magnitude"):
        registry.get("prune_everything")


def test_register_refuses_a_second_name_an_unknown_kind_and_a_baseline_without_fit():
    with pytest.raises(ValueError, match="twice"):
        registry.register(registry.RemovalMethod("npo", "NPO again", registry.FINETUNING, "m:f"))
    with pytest.raises(ValueError, match="kind"):
        registry.register(registry.RemovalMethod("new", "new", "distillation", "m:f"))
    with pytest.raises(ValueError, match="needs a fit"):
        registry.register(registry.RemovalMethod("new", "new", registry.FINETUNING, None))
    assert "new" not in registry.names()


def test_the_rules_import_it_without_torch():
    # the Snakefile imports the registry on every parse: it must stay light
    code = "import sys, knowsubnet.method.registry as r; r.names(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_params_list_exactly_the_registered_methods():
    """A method added to the registry and not to the params (or the reverse) fails here: the schema's
    enums and required sections, base.yaml's documented sections and lists, the typed `Baselines`."""
    schema = yaml.safe_load(SCHEMA.read_text())["properties"]
    assert schema["run"]["properties"]["baselines"]["items"]["enum"] == registry.baselines()
    assert schema["baselines"]["required"] == ["device", *registry.baselines()]
    assert list(schema["baselines"]["properties"]) == ["device", *registry.baselines()]
    point = schema["sweep"]["properties"]["points"]["additionalProperties"]
    assert point["properties"]["method"]["enum"] == registry.names()
    base = yaml.safe_load(BASE.read_text())
    assert list(base["baselines"]) == ["device", *registry.baselines()]
    # base.yaml's comments name the baselines where run.baselines and sweep points are documented
    assert BASE.read_text().count(", ".join(registry.baselines())) == 2, (
        f"config/base.yaml: list the baselines as {', '.join(registry.baselines())} under run and sweep"
    )
    assert [f.name for f in dataclasses.fields(params_config.Baselines)] == ["device", *registry.baselines()]
