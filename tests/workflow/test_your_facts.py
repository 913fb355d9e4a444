"""docs/YOUR_FACTS.md, followed as a new user would: the package installed from a wheel into a fresh
virtual environment, then every `knowsubnet` command of the guide, outside the repository, on the
tiny model and the example facts of a relation ConceptNet lacks (CapitalOf)."""

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml
from conftest import MIRROR, REPO_ROOT, project_copy

pytestmark = pytest.mark.slow
GUIDE = REPO_ROOT / "docs" / "YOUR_FACTS.md"
SMOKE = REPO_ROOT / "tests" / "smoke.yaml"


def guide_commands() -> list[str]:
    """The `knowsubnet ...` lines of the guide's bash blocks, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", GUIDE.read_text(), re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.startswith("knowsubnet ")]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with knowsubnet installed from a wheel built from the tracked files. Its
    dependencies come from the project's environment (a path line, not a site dir: the project's
    own editable install there stays invisible), so the import must find the wheel's copy."""
    tmp = tmp_path_factory.mktemp("fresh")
    source = project_copy(tmp)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = venv / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", str(source)],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(source)
    return venv


def run_in(cwd: Path, venv: Path, command: list[str]) -> subprocess.CompletedProcess:
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(cwd), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)


def test_the_wheel_carries_the_command_defaults_schema_and_facts(installed, tmp_path):
    found = run_in(
        tmp_path,
        installed,
        [
            "python",
            "-c",
            "import knowsubnet.api.run as r; print(r.__file__); "
            "print(all(p.is_file() for p in (r.BASE_PARAMS, r.SCHEMA, r.FACTS_TABLE)))",
        ],
    )
    where, ok = found.stdout.split()
    assert str(installed) in where and ok == "True", found.stderr[-2000:]
    assert (installed / "bin" / "knowsubnet").is_file()


def test_the_guide_runs_outside_the_repository(installed, tmp_path):
    if not (MIRROR / "README.md").is_file():
        pytest.skip(f"no local data mirror at {MIRROR}: the guide's run would download WikiText")
    for name in ("facts.csv", "templates.yaml"):
        shutil.copy(REPO_ROOT / "docs" / "examples" / "capitals" / name, tmp_path / name)
    commands = guide_commands()
    assert [c.split()[1] for c in commands] == ["discover", "evaluate", "robustness", "export"]
    # as written, plus the local mirror (no network here), the smoke overlay (a shorter tiny model and
    # relearning: seconds, not minutes; the guide's --set still wins) and no progress bar
    extra = ["--mirror", str(MIRROR), "--params", str(SMOKE), "--no-progress"]
    for command in commands:
        proc = run_in(tmp_path, installed, command.split() + extra)
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"

    run = tmp_path / "capitals-run"
    mask_dir = run / "results/masks/tiny-gpt2/capitals/seed0"
    assert (mask_dir / "mask.safetensors").is_file() and (mask_dir / "metrics.json").is_file()
    params = yaml.safe_load((run / "params.yaml").read_text())
    assert params["targets"] == {
        "capitals": {"facts": str(tmp_path / "facts.csv"), "templates": str(tmp_path / "templates.yaml")}
    }
    # the held-out wordings the robustness probes read are the templates file's `heldout` ones
    import pandas as pd

    sentences = pd.read_parquet(run / "results/robustness/tiny-gpt2/capitals/seed0/sentences.parquet")
    capital = sentences[sentences["rel"] == "CapitalOf"]
    assert capital["prompt"].str.startswith("If you fly to the capital of").any()
    export = run / "results/remaining/tiny-gpt2/capitals/seed0"
    assert (export / "README.md").is_file() and (export / "config.json").is_file()
    card = (export / "README.md").read_text()
    assert "every fact of the file `facts.csv`" in card and str(tmp_path) not in card  # no one's disk paths

    # the library and the command share the folder: the same params pick up what is done
    library = subprocess.run(
        [
            installed / "bin" / "python",
            "-c",
            "from knowsubnet.api import discover; "
            f"found = discover('tiny-gpt2', 'facts.csv', templates='templates.yaml', target='capitals', "
            f"out='capitals-run', params=[{str(SMOKE)!r}], train={{'steps': 50}}, data={{'mirror': {str(MIRROR)!r}}}); "
            "print(found.mask); print(sorted(found.metrics))",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert library.returncode == 0, library.stderr[-2000:]
    mask_line, keys = library.stdout.strip().splitlines()[-2:]
    assert mask_line == str(mask_dir / "mask.safetensors") and "suppress" in keys


def test_other_params_in_the_same_folder_stop_with_one_line(installed, tmp_path):
    for name in ("facts.csv", "templates.yaml"):
        shutil.copy(REPO_ROOT / "docs" / "examples" / "capitals" / name, tmp_path / name)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "params.yaml").write_text("something: else\n")
    proc = run_in(
        tmp_path,
        installed,
        [
            "knowsubnet",
            "discover",
            "--model",
            "tiny-gpt2",
            "--facts",
            "facts.csv",
            "--templates",
            "templates.yaml",
            "--out",
            "run",
        ],
    )
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "holds a run with other params" in proc.stderr


def test_a_fact_file_target_runs_through_the_pipeline_to_robustness(tmp_path):
    """The guide's section 5: config/overlays/demo-capitals.yaml under Snakemake (the tiny model, smoke sizes)."""
    from conftest import BIN, run

    proj = project_copy(tmp_path)
    result = "results/robustness/tiny-gpt2/capitals/seed0/robustness.json"
    run(
        [
            BIN / "snakemake",
            "--cores",
            "2",
            result,
            "--configfile",
            "tests/smoke.yaml",
            "config/overlays/demo-capitals.yaml",
        ],
        proj,
    )
    import pandas as pd

    train = pd.read_parquet(proj / "data/processed/splits/capitals/targetkg_train.parquet")
    assert set(train["rel"]) == {"CapitalOf"} and set(train["source"]) == {"user"}
    sentences = pd.read_parquet(proj / result.replace("robustness.json", "sentences.parquet"))
    assert sentences.loc[sentences["rel"] == "CapitalOf", "prompt"].str.startswith("The seat of power in").any()
    # editing the templates re-runs the split and what follows it
    templates = proj / "docs/examples/capitals/templates.yaml"
    templates.write_text(templates.read_text().replace("sits in {o}", "is based in {o}"))
    dry = run(
        [BIN / "snakemake", "-n", result, "--configfile", "tests/smoke.yaml", "config/overlays/demo-capitals.yaml"],
        proj,
    ).stdout
    assert "split_controls" in dry and "evaluate_robustness" in dry
