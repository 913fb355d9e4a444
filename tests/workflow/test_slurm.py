"""The tiny preset through workflow/profiles/slurm-small on a real one-node SLURM cluster.

Needs Debian's slurm-wlm and munge installed and root (slurmd); `.ci/run` installs them with
apt-get when it runs as root. Skipped, with the reason, where they are missing, and when
KNOWSUBNET_SKIP_SLURM=1. About a minute: the data stages, ControlLM tokenisation,
verbalisation and the first discovery run as SLURM jobs (the fake GPU makes the GPU stages
schedulable); fetch_data and prepare_model run locally (localrules).
"""

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from slurm_cluster import Cluster, missing
from conftest import BIN, MIRROR, project_copy

SKIP = ("KNOWSUBNET_SKIP_SLURM=1" if os.environ.get("KNOWSUBNET_SKIP_SLURM") == "1" else missing()
        or (None if MIRROR.is_dir() else "local data mirror not present"))
pytestmark = [pytest.mark.slow, pytest.mark.skipif(SKIP is not None, reason=f"SLURM test skipped: {SKIP}")]
MASK = "results/masks/tiny-gpt2/IsA/seed0/mask.safetensors"


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


def test_tiny_preset_runs_through_the_slurm_profile(tmp_path, cluster):
    proj = project_copy(tmp_path)
    env = {**cluster.env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(proj / "src")}  # jobs inherit it (sbatch --export=ALL)
    started = time.monotonic()
    proc = subprocess.run(
        [BIN / "snakemake", "--profile", "workflow/profiles/slurm-small", "--configfile", "params.yaml",
         "tests/smoke.yaml", "--slurm-init-seconds-before-status-checks", "2", "--latency-wait", "5", MASK],
        cwd=proj, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.monotonic() - started
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{out[-6000:]}\n{cluster.logs()}"
    assert (proj / MASK).is_file()
    print(f"SLURM run to the first mask: {elapsed:.0f} s")

    # remote jobs were submitted with the profile's resources, GPU stages with a GPU; downloads local
    assert len(re.findall(r"has been submitted with SLURM jobid", out)) == 5, out[-3000:]
    assert re.search(r"localrule fetch_data", out) and re.search(r"localrule prepare_model", out)
    jobs = subprocess.run(["scontrol", "-o", "show", "job"], env=env, capture_output=True, text=True).stdout
    rows = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in jobs.splitlines() if line.strip()]
    assert len(rows) == 5 and all(r["JobState"] == "COMPLETED" for r in rows), jobs
    gpu = [r for r in rows if r["Partition"] == "gpu"]  # verbalize, discover_mask: one GPU each
    assert len(gpu) == 2 and all(r.get("TresPerJob") == "gres:gpu:1" for r in gpu), jobs
    assert all("TresPerJob" not in r for r in rows if r["Partition"] == "cpu"), jobs
    assert all(r["MinMemoryNode"] in ("2000M", "3000M", "4000M") for r in rows), jobs  # small sizes, not 64 GB
    # logs of successful jobs are kept
    kept = list((proj / "logs" / "slurm").rglob("*.log"))
    assert len(kept) >= 5, kept
