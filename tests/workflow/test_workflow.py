"""The Snakemake and DVC wiring: DAGs build for every preset, data stages agree, DVC re-runs
only what a params change touches, and a bad params value stops Snakemake with its key."""

import hashlib
import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import BIN, MIRROR, project_copy, run
from conftest import REPO_ROOT as ROOT

needs_mirror = pytest.mark.skipif(not MIRROR.is_dir(), reason="local data mirror not present")


@pytest.mark.parametrize("preset", ["base", "demo", "paper", "relations"])
def test_snakemake_dry_run_builds_the_dag(preset):
    overlay = [] if preset == "base" else ["--configfile", f"config/presets/{preset}.yaml"]  # base: params.yaml
    # --forceall: the whole DAG, whatever outputs a local run left in the tree
    out = run([BIN / "snakemake", "-n", "--forceall", *overlay], ROOT)
    for rule in ("fetch_data", "split_controls", "discover_mask", "evaluate_ablation"):
        assert rule in out.stdout + out.stderr


def test_own_seeds_without_a_csqa_target_need_no_csqa_seeds(tmp_path):
    own = tmp_path / "own.yaml"
    own.write_text("run: {targets: [IsA], seeds: [11]}\n")
    out = run([BIN / "snakemake", "-n", "--configfile", "params.yaml", str(own)], ROOT)
    assert "discover_mask" in out.stdout + out.stderr and "evaluate_robustness" in out.stdout + out.stderr


def test_snakemake_rejects_a_bad_param_naming_its_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mask: {granularity: rows}\n")
    proc = run([BIN / "snakemake", "-n", "--configfile", "params.yaml", str(bad)], ROOT, check=False)
    assert proc.returncode != 0
    assert "granularity" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "path, problem",
    [
        (
            "results/masks/tiny-gpt2/NoSuchTarget/seed0/mask.safetensors",
            "target 'NoSuchTarget' is not defined under 'targets'",
        ),
        ("results/remaining/no-such-model/IsA/seed0", "model 'no-such-model' is not defined under 'models'"),
    ],
)
def test_a_target_path_with_an_undefined_name_stops_with_one_line_listing_the_defined_ones(path, problem):
    proc = run([BIN / "snakemake", "-n", path], ROOT, check=False)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stdout + proc.stderr
    assert lines[0].startswith(f"error: {path}: {problem} in the params; defined: ")
    defined = yaml.safe_load((ROOT / "params.yaml").read_text())["targets" if "target " in problem else "models"]
    assert lines[0].endswith(", ".join(sorted(defined)))


def test_export_is_on_demand_and_joins_the_default_target_for_export_seeds(tmp_path):
    on_demand = run([BIN / "snakemake", "-n", "--forceall", "results/remaining/tiny-gpt2/IsA/seed0"], ROOT).stdout
    assert "rule export_remaining:" in on_demand
    default = run([BIN / "snakemake", "-n", "--forceall"], ROOT).stdout
    assert "export_remaining" not in default  # params.yaml: export.seeds is []
    own = tmp_path / "own.yaml"
    own.write_text("export: {seeds: [0]}\n")
    exported = run([BIN / "snakemake", "-n", "--forceall", "--configfile", "params.yaml", str(own)], ROOT).stdout
    assert exported.count("rule export_remaining:") == len(
        yaml.safe_load((ROOT / "params.yaml").read_text())["run"]["targets"]
    )


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.parquet"))
    }


@needs_mirror
@pytest.mark.slow
def test_data_stages_snakemake_and_dvc_agree_and_dvc_reruns_only_the_split(tmp_path):
    proj = project_copy(tmp_path)
    run(
        [BIN / "snakemake", "--cores", "2", *[f"data/processed/splits/{t}/summary.json" for t in ("IsA", "UsedFor")]],
        proj,
    )
    triplets = hashlib.sha256((proj / "data/processed/triplets.parquet").read_bytes()).hexdigest()
    splits = digest(proj / "data/processed/splits")
    targets = {p.name for p in (proj / "data/processed/splits").iterdir() if p.is_dir()}
    assert targets == {"IsA", "UsedFor"}  # one split job per target, only those asked for

    shutil.rmtree(proj / "data/raw")
    shutil.rmtree(proj / "data/processed")
    run([BIN / "dvc", "repro", "split_controls@IsA", "split_controls@UsedFor"], proj)
    assert hashlib.sha256((proj / "data/processed/triplets.parquet").read_bytes()).hexdigest() == triplets
    assert digest(proj / "data/processed/splits") == splits

    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["split"]["max_controlkg"]["train"] += 7
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run([BIN / "dvc", "status", "fetch_data", "extract_triplets", "split_controls@IsA"], proj).stdout
    assert "split_controls@IsA" in status
    assert "fetch_data" not in status and "extract_triplets" not in status
    rerun = run([BIN / "dvc", "repro", "split_controls@IsA"], proj).stdout
    assert "Running stage 'split_controls@IsA'" in rerun
    assert "Running stage 'extract_triplets'" not in rerun and "Running stage 'fetch_data'" not in rerun


def test_gpu_stages_keep_their_gpu_when_set_resources_is_given_on_the_command_line():
    """`--set-resources` replaces a profile's whole block; the GPU request lives in the rules."""
    proc = run(
        [
            BIN / "snakemake",
            "results/masks/tiny-gpt2/IsA/seed0/mask.safetensors",
            "-n",
            "--forceall",
            "--set-resources",
            "discover_mask:mem_mb=1000",
        ],
        ROOT,
    )
    out = proc.stdout + proc.stderr
    blocks = re.split(r"^(?=(?:local)?rule \w+:)", out, flags=re.M)
    discover = next(b for b in blocks if b.startswith("rule discover_mask:"))
    verbalize = next(b for b in blocks if b.startswith("rule verbalize:"))
    assert "gpu=1" in discover and "mem_mb=1000" in discover
    assert "gpu=1" in verbalize
    assert all("gpu=1" not in b for b in blocks if b.startswith(("rule split_controls:", "rule extract_triplets:")))
