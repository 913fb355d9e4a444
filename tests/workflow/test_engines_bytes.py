"""Two engines, same bytes: `dvc repro` and `snakemake` write byte-identical artifacts, and each takes
over the other's outputs on one tree as docs/ARCHITECTURE.md ("Switching engines on one tree") says.

One tree, the tiny preset cut to its smallest (tests/smoke.yaml and SMALLER: one model, one target,
one seed, a few steps, one relearning point; about 4 min on 2 busy cores): every stage of the default
target and the export. Not run: baselines, seed combinations, CSQA finetuning (their JSON goes
through the same core.io.write_json).

1. `dvc repro` runs every stage; the sha256 of every artifact is recorded (data/raw, data/processed,
   results/; not the logs, and not results/benchmarks, Snakemake's own timings).
2. DVC -> Snakemake: `snakemake --touch` records DVC's outputs; `snakemake -n` has nothing to do.
3. `snakemake --forceall` runs every stage again: every artifact DVC wrote is rewritten with the
   same bytes (a list of the files that differ otherwise), but for the wall times a few JSON files
   record (MEASURED): those differ between any two runs, whichever engine, and are compared with
   the measured times left out.
4. Snakemake -> DVC: `dvc commit --force` records Snakemake's outputs; `dvc status` is clean.
"""

import hashlib
import json
import os
import subprocess
import time

import pytest
import yaml
from conftest import BIN, MIRROR, project_copy

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not MIRROR.is_dir(), reason="local data mirror not present")]

ARTIFACTS = ("data/raw", "data/processed", "results")
NOT_ARTIFACTS = ("results/benchmarks/",)  # Snakemake's `benchmark:` timings (DVC writes none); logs are under logs/
# Smaller still than tests/smoke.yaml where no writer is left out: fewer probes, one short relearning point.
SMALLER = {
    "models": {"tiny-gpt2": {"max_steps": 20}},
    "robustness": {
        "max_facts": 30,
        "in_context": [0, 3],
        "quantize_bits": [4],
        "bootstrap": 100,
        "relearn": {"points": [{"scope": "masked", "lr": 1.0e-4, "steps": 2}]},
    },
    "export": {"seeds": [0]},
}  # the export stage's model card and provenance too
# Measured wall times in JSON artifacts (seconds): the only content that may differ between two runs.
MEASURED = {"wall_time_s", "wall_seconds", "train_seconds"}


def merge(base: dict, over: dict) -> dict:
    for key, value in over.items():
        base[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


def hashes(root) -> dict[str, str]:
    out = {}
    for folder in ARTIFACTS:
        for path in sorted((root / folder).rglob("*")):
            name = str(path.relative_to(root))
            if path.is_file() and not name.startswith(NOT_ARTIFACTS) and path.name != ".gitkeep":
                out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def without_measured(value):
    if isinstance(value, dict):
        return {k: without_measured(v) for k, v in value.items() if k not in MEASURED}
    if isinstance(value, list):
        return [without_measured(v) for v in value]
    return value


def run(cmd, proj):
    """A command on the copy with the copy's own library (PYTHONPATH): its code version stays the
    same for the whole test, whatever happens meanwhile in the working tree the test ran from."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(proj / "src"))
    proc = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def dvc_clean(proj) -> bool:
    out = run([BIN / "dvc", "status"], proj).stdout
    return "up to date" in out


def test_dvc_and_snakemake_write_the_same_bytes_and_take_over_each_other(tmp_path):
    start = time.monotonic()
    proj = project_copy(tmp_path)
    params = merge(
        yaml.safe_load((proj / "params.yaml").read_text()), yaml.safe_load((proj / "tests" / "smoke.yaml").read_text())
    )
    params = merge(params, SMALLER)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([BIN / "python", "workflow/dvc_yaml.py", "dvc.yaml"], proj)

    # 1. DVC runs everything
    run([BIN / "dvc", "repro", "--quiet"], proj)
    by_dvc = hashes(proj)
    dvc_json = {name: json.loads((proj / name).read_text()) for name in by_dvc if name.endswith(".json")}
    assert "results/report.md" in by_dvc and "results/masks/tiny-gpt2/IsA/seed0/mask.safetensors" in by_dvc
    assert "data/processed/triplets.parquet" in by_dvc and "results/remaining/tiny-gpt2/IsA/seed0/README.md" in by_dvc

    # 2. DVC -> Snakemake: `snakemake --touch` takes DVC's outputs as they are
    run([BIN / "snakemake", "--touch", "--cores", "1"], proj)
    dry = run([BIN / "snakemake", "-n"], proj)
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-3000:]

    # 3. Snakemake runs everything again: the same bytes
    run([BIN / "snakemake", "--forceall", "--cores", "2"], proj)
    by_snakemake = hashes(proj)
    assert set(by_dvc) <= set(by_snakemake), set(by_dvc) - set(by_snakemake)
    differ = sorted(name for name in by_dvc if by_dvc[name] != by_snakemake[name])
    timed = [
        name
        for name in differ
        if name in dvc_json
        and without_measured(dvc_json[name]) == without_measured(json.loads((proj / name).read_text()))
    ]
    wrong = sorted(set(differ) - set(timed))
    assert not wrong, f"{len(wrong)} of {len(by_dvc)} artifacts differ between the engines: {wrong}"

    # 4. Snakemake -> DVC: `dvc commit --force` takes Snakemake's outputs as they are
    assert dvc_clean(proj) == (not timed)  # a stage re-run by Snakemake records other wall times
    run([BIN / "dvc", "commit", "--force", "--quiet"], proj)
    assert dvc_clean(proj)
    print(
        f"{len(by_dvc)} artifacts: {len(by_dvc) - len(timed)} byte-identical, {len(timed)} identical but for "
        f"their wall times ({', '.join(timed)}); {time.monotonic() - start:.0f} s"
    )
