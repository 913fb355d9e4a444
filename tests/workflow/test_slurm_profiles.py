"""Every rule that asks for a GPU gets a GPU partition, memory and runtime in both SLURM profiles."""

import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ("slurm", "slurm-small")


def gpu_rules() -> set[str]:
    sys.path.insert(0, str(ROOT / "workflow"))
    import dvc_yaml

    _, workflow = dvc_yaml.load_workflow()
    return {rule.name for rule in workflow.rules if rule.resources.get("gpu") is not None
            and getattr(rule.resources.get("gpu"), "value", rule.resources.get("gpu")) == 1}


@pytest.mark.parametrize("profile", PROFILES)
def test_every_gpu_rule_has_a_gpu_partition_memory_and_runtime(profile):
    rules = gpu_rules()
    assert {"discover_mask", "evaluate_robustness", "finetune_csqa"} <= rules  # the check sees what it checks
    config = yaml.safe_load((ROOT / "workflow" / "profiles" / profile / "config.yaml").read_text())
    default, resources = config["default-resources"], config.get("set-resources", {})
    for rule in sorted(rules):
        res = resources.get(rule, {})
        assert res.get("slurm_partition") == "gpu", f"{profile}: rule {rule} asks for a GPU but has no GPU partition"
        assert "mem_mb" in res and res["mem_mb"] >= default["mem_mb"], f"{profile}: rule {rule}: no mem_mb of its own"
        assert res.get("runtime", default["runtime"]) >= 30, f"{profile}: rule {rule}: runtime under 30 min"
