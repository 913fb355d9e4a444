"""The tiny preset through workflow/profiles/slurm-small on a real one-node SLURM cluster, to the
robustness stage.

Needs Debian's slurm-wlm and munge installed and root (slurmd); `.ci/run` installs them with
apt-get when it runs as root. Skipped, with the reason, where they are missing, and when
KNOWSUBNET_SKIP_SLURM=1. About three minutes: the data stages, ControlLM tokenisation,
verbalisation, the discovery run and the robustness stage run as six SLURM jobs (the fake GPU
makes the GPU stages schedulable); fetch_data and prepare_model run locally (localrules).
tests/smoke.yaml and FAST below cut every stage to seconds: what is tested is the placement, not
the numbers (tests/workflow/test_end_to_end.py checks those).

The profile is used as docs/CLUSTER.md says to: a copy, edited. The copy adds only what a user fills
in for their cluster, on discover_mask: `gpu_model` (the test GPU's type, `fake`) and `cpus_per_gpu`,
so the run also shows the pinned plugin turning them into `--gpus=fake:1 --cpus-per-gpu=1`.
"""

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import BIN, MIRROR, project_copy
from slurm_cluster import Cluster, missing

SKIP = (
    "KNOWSUBNET_SKIP_SLURM=1"
    if os.environ.get("KNOWSUBNET_SKIP_SLURM") == "1"
    else missing() or (None if MIRROR.is_dir() else "local data mirror not present")
)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(SKIP is not None, reason=f"SLURM test skipped: {SKIP}")]
ROBUSTNESS = "results/robustness/tiny-gpt2/IsA/seed0/robustness.json"
MASK = "results/masks/tiny-gpt2/IsA/seed0/mask.safetensors"
# on top of tests/smoke.yaml: the tiny model's training (prepare_model, on the critical path) and the
# robustness stage (one probe size, one relearning run) at their smallest
FAST = {
    "models": {"tiny-gpt2": {"max_steps": 10, "eval_every": 10}},
    "robustness": {
        "max_facts": 8,
        "in_context": [0],
        "quantize_bits": [],
        "bootstrap": 20,
        "relearn": {
            "points": [{"scope": "masked", "lr": 1.0e-4, "steps": 1}],
            "data": ["targetkg"],
            "models": ["original", "removed_held"],
            "seeds": [0],
        },
    },
}
# the SLURM jobs: rule -> partition (the rest of their sizes come from the profile)
JOBS = {
    "extract_triplets": "cpu",
    "split_controls": "cpu",
    "tokenize_controllm": "cpu",
    "verbalize": "gpu",
    "discover_mask": "gpu",
    "evaluate_robustness": "gpu",
}


@pytest.fixture
def cluster(tmp_path):
    # a short path: munge's socket path must fit in a sockaddr_un
    root = Path(f"/tmp/ks-slurm-{os.getpid()}")
    c = Cluster(root)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def minutes(limit: str) -> int:
    """scontrol's TimeLimit ([D-]HH:MM:SS) in minutes."""
    days, _, hms = limit.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return int(days or 0) * 1440 + h * 60 + m + (s > 0)


def test_tiny_preset_runs_through_the_slurm_profile_to_robustness(tmp_path, cluster):
    proj = project_copy(tmp_path)
    (proj / "slurm-fast.yaml").write_text(yaml.safe_dump(FAST))
    shutil.copytree(proj / "workflow" / "profiles" / "slurm-small", proj / "my-profile")
    profile = yaml.safe_load((proj / "my-profile" / "config.yaml").read_text())
    profile["set-resources"]["discover_mask"].update(gpu_model="fake", cpus_per_gpu=1)
    (proj / "my-profile" / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))

    env = {
        **cluster.env,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(proj / "src"),
    }  # jobs inherit it (sbatch --export=ALL)
    started = time.monotonic()
    proc = subprocess.run(
        [
            BIN / "snakemake",
            "--profile",
            "my-profile",
            "--configfile",
            "params.yaml",
            "tests/smoke.yaml",
            "slurm-fast.yaml",
            "--slurm-init-seconds-before-status-checks",
            "2",
            "--latency-wait",
            "5",
            "--slurm-efficiency-report",
            "--slurm-efficiency-report-path",
            "logs/slurm",
            ROBUSTNESS,
        ],
        cwd=proj,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    elapsed = time.monotonic() - started
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{out[-6000:]}\n{cluster.logs()}"
    assert (proj / MASK).is_file()
    assert isinstance(json.loads((proj / ROBUSTNESS).read_text()), dict)
    print(f"SLURM run to the robustness stage: {elapsed:.0f} s")

    # six remote jobs, downloads local
    assert len(re.findall(r"has been submitted with SLURM jobid", out)) == len(JOBS), out[-3000:]
    assert re.search(r"localrule fetch_data", out) and re.search(r"localrule prepare_model", out)
    jobs = subprocess.run(["scontrol", "-o", "show", "job"], env=env, capture_output=True, text=True).stdout
    rows = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in jobs.splitlines() if line.strip()]
    assert all(r["JobState"] == "COMPLETED" for r in rows), jobs
    by_rule = {re.match(r"rule_(\w+?)(?:_wildcards_|$)", r["Comment"]).group(1): r for r in rows}
    assert set(by_rule) == set(JOBS) and len(rows) == len(JOBS), jobs

    # each job where the profile puts it, with its memory and time limit, a GPU exactly for GPU stages
    default, sized = profile["default-resources"], profile["set-resources"]
    for rule, partition in JOBS.items():
        row, want = by_rule[rule], {**default, **sized.get(rule, {})}
        assert row["Partition"] == partition, (rule, row)
        assert row["MinMemoryNode"] == f"{want['mem_mb']}M", (rule, row)
        assert minutes(row["TimeLimit"]) == want["runtime"], (rule, row)
        if partition == "cpu":
            assert "TresPerJob" not in row, (rule, row)
    assert by_rule["verbalize"]["TresPerJob"] == by_rule["evaluate_robustness"]["TresPerJob"] == "gres:gpu:1"
    # gpu_model and cpus_per_gpu, as filled in above
    assert by_rule["discover_mask"]["TresPerJob"] == "gres:gpu:fake:1", by_rule["discover_mask"]
    assert by_rule["discover_mask"].get("CpusPerTres") == "gres:gpu:1", by_rule["discover_mask"]

    # the efficiency report needs accounting (sacct), which this cluster lacks: no report, no failure
    assert "Failed to retrieve job data" in out or list((proj / "logs" / "slurm").glob("efficiency_report_*.csv"))

    # logs of successful jobs are kept
    kept = list((proj / "logs" / "slurm").rglob("*.log"))
    assert len(kept) >= len(JOBS), kept
