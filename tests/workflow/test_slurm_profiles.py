"""Both SLURM profiles place every GPU stage: what the rules ask for, read from the rules themselves.

The set of GPU stages is every rule whose `resources:` say `gpu=1` in the parsed workflow (not a
list kept here), so a new GPU rule without a GPU partition, memory and runtime in either profile
fails. The profiles' options, the commented-out ones included, must be accepted by the installed
snakemake-executor-plugin-slurm, and the partition file must place the same rules on GPU partitions.
"""

import functools
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import BIN

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ("slurm", "slurm-small")
PARTITIONS = ROOT / "workflow" / "profiles" / "slurm-partitions.yaml"


@functools.cache
def workflow():
    sys.path.insert(0, str(ROOT / "workflow"))
    import dvc_yaml

    return dvc_yaml.load_workflow()[1]


def _value(resource):
    return getattr(resource, "value", resource)


def remote_rules() -> dict:
    """The rules that run as SLURM jobs (every rule but the localrules), by name."""
    wf = workflow()
    return {rule.name: rule for rule in wf.rules if rule.name not in wf._localrules}


def gpu_rules() -> set[str]:
    """Every rule with `resources: gpu=1` (use-rule copies included), as the parsed rules say."""
    return {rule.name for rule in workflow().rules if _value(rule.resources.get("gpu")) == 1}


def model_rules() -> set[str]:
    """Remote rules that read the prepared model (an input named `model`)."""
    return {name for name, rule in remote_rules().items() if "model" in rule.input._names}


def profile(name: str) -> dict:
    return yaml.safe_load((ROOT / "workflow" / "profiles" / name / "config.yaml").read_text())


def test_the_gpu_rules_are_read_from_the_rules():
    rules = gpu_rules()
    # the check sees what it checks: the main GPU stages and a `use rule` copy (baseline_robustness)
    assert {"verbalize", "discover_mask", "evaluate_robustness", "finetune_csqa", "baseline_robustness"} <= rules
    assert not rules & {"fetch_data", "extract_triplets", "tokenize_controllm", "report", "all"}
    assert rules <= set(remote_rules())  # a GPU rule run locally would never get its GPU


@pytest.mark.parametrize("name", PROFILES)
def test_every_gpu_rule_has_a_gpu_partition_memory_and_runtime(name):
    config = profile(name)
    default, resources = config["default-resources"], config.get("set-resources", {})
    assert default.get("slurm_partition") != "gpu"  # else a missing rule entry would pass unnoticed
    for rule in sorted(gpu_rules()):
        res = resources.get(rule, {})
        assert res.get("slurm_partition") == "gpu", f"{name}: rule {rule} asks for a GPU but has no GPU partition"
        assert "mem_mb" in res and res["mem_mb"] >= default["mem_mb"], f"{name}: rule {rule}: no mem_mb of its own"
        assert res.get("runtime", default["runtime"]) >= 30, f"{name}: rule {rule}: runtime under 30 min"
        assert "gpu" not in res and "gres" not in res, f"{name}: rule {rule}: the GPU request belongs in the rule"


@pytest.mark.parametrize("name", PROFILES)
def test_every_rule_that_loads_the_model_has_its_own_memory(name):
    resources = profile(name).get("set-resources", {})
    assert {"export_remaining", "discover_mask"} <= model_rules()
    missing = sorted(rule for rule in model_rules() if "mem_mb" not in resources.get(rule, {}))
    assert not missing, f"{name}: rules loading the model without a mem_mb of their own: {missing}"


@pytest.mark.parametrize("name", PROFILES)
def test_the_profile_names_only_rules_of_the_workflow(name):
    """A renamed rule would otherwise silently lose its partition and sizes."""
    config = profile(name)
    named = set(config.get("set-resources", {})) | set(config.get("set-threads", {}))
    assert named <= set(remote_rules()), f"{name}: not a remote rule: {sorted(named - set(remote_rules()))}"


def uncommented(text: str) -> str:
    """The profile with its commented-out plugin options (`# slurm-...: value`) switched on."""
    return re.sub(r"^# (slurm-[a-z-]+:)", r"\1", text, flags=re.M)


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_option_commented_or_not_is_accepted_by_the_installed_plugin(name, tmp_path):
    """A dry run parses every option against the installed plugin (an unknown one is an argparse
    error, a missing partition file a WorkflowError); the commented ones are switched on first."""
    text = (ROOT / "workflow" / "profiles" / name / "config.yaml").read_text()
    options = set(re.findall(r"^# (slurm-[a-z-]+):", text, flags=re.M))
    assert {"slurm-efficiency-report", "slurm-partition-config", "slurm-array-jobs"} <= options
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.yaml").write_text(uncommented(text))
    proc = subprocess.run(
        [BIN / "snakemake", "--profile", str(tmp_path / name), "-n", "--forceall", "--quiet", "all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    # and the check can fail: an option the plugin does not know
    (tmp_path / name / "config.yaml").write_text(uncommented(text) + "slurm-no-such-option: true\n")
    proc = subprocess.run(
        [BIN / "snakemake", "--profile", str(tmp_path / name), "-n", "--quiet", "all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "slurm-no-such-option" in proc.stderr


class _Resources(dict):
    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


class _Job:
    """What the plugin's partition scoring reads of a job: name, threads, resources."""

    def __init__(self, name, threads, resources):
        self.name, self.threads, self.resources = name, threads, _Resources(resources)

    def __str__(self):
        return self.name


@pytest.mark.parametrize("name", PROFILES)
def test_the_partition_file_places_gpu_rules_on_gpu_partitions(name):
    """With `slurm-partition-config` and the profile's `slurm_partition` lines deleted (as the file says),
    the installed plugin puts each rule, sized as in the profile, on a GPU partition iff it asks for a GPU."""
    from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file

    partitions = read_partition_file(PARTITIONS)
    with_gpu = {p.name for p in partitions if p.limits.max_gpu > 0}
    assert with_gpu and with_gpu != {p.name for p in partitions}
    config = profile(name)
    for rule_name, rule in sorted(remote_rules().items()):
        resources = {**config["default-resources"], **config.get("set-resources", {}).get(rule_name, {})}
        resources.pop("slurm_partition")
        if _value(rule.resources.get("gpu")):
            resources["gpu"] = _value(rule.resources["gpu"])
        threads = config.get("set-threads", {}).get(rule_name, _value(rule.resources["_cores"]))
        chosen = get_best_partition(partitions, _Job(rule_name, threads, resources), logging.getLogger("test"))
        assert chosen is not None, f"{name}: no partition of {PARTITIONS.name} fits rule {rule_name}: {resources}"
        assert (chosen in with_gpu) == (rule_name in gpu_rules()), f"{name}: rule {rule_name} placed on {chosen}"


def test_the_cluster_doc_and_the_profile_name_every_gpu_stage():
    """docs/CLUSTER.md's section "GPU stages" lists exactly the gpu=1 rules; the slurm profile's head names them."""
    doc = (ROOT / "docs" / "CLUSTER.md").read_text()
    section = re.search(r"^## GPU stages\n(.*?)(?=^## )", doc, flags=re.M | re.S)
    assert section, "docs/CLUSTER.md has no section '## GPU stages'"
    listed = set(re.findall(r"^\| `(\w+)` \|", section.group(1), flags=re.M))
    assert listed == gpu_rules(), f"the table lists {sorted(listed)}, the rules say {sorted(gpu_rules())}"
    head = (ROOT / "workflow" / "profiles" / "slurm" / "config.yaml").read_text().split("\nexecutor:")[0]
    assert not [rule for rule in gpu_rules() if rule not in head], "the slurm profile's head misses a GPU stage"
