"""One param from the command line: `snakemake --config train__steps=10`, `params_yaml.py --set
train.steps=10` (`make params SET=...`). A bad key or value stops with one line naming it and what
is allowed (the valid keys, the defined targets, the allowed values), never a schema dump."""

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import BIN, REPO_ROOT, project_copy, run

from knowsubnet.core import config
from knowsubnet.core.errors import InputError

SCHEMA = REPO_ROOT / "config" / "params.schema.yaml"


@pytest.fixture(scope="module")
def proj(tmp_path_factory) -> Path:
    """One project copy for the module's dry runs (a dry run writes only .snakemake/ and .knowsubnet/)."""
    return project_copy(tmp_path_factory.mktemp("overrides"), mirror=False)


def _params_yaml_module():
    spec = importlib.util.spec_from_file_location("params_yaml", REPO_ROOT / "workflow" / "params_yaml.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- snakemake --config ----------------------------------------------------------------------------


def test_snakemake_config_overrides_reach_the_dag_and_the_scripts(proj):
    out = run([BIN / "snakemake", "-n", "--config", "train__steps=10", "run__targets=[IsA]", "run__seeds=[0]"], proj)
    log = out.stdout + out.stderr
    assert set(re.findall(r"data/processed/splits/([\w-]+)/", log)) == {"IsA"}  # run.targets decides the DAG
    assert set(re.findall(r"\bseed(\d+)/", log)) == {"0"}
    assert "discover_mask" in log and "evaluate_ablation" in log
    # the effective params file the scripts read: typed values (Snakemake alone reads `[0]` as
    # ['0']), folded into their sections
    written = [yaml.safe_load(p.read_text()) for p in (proj / ".knowsubnet").glob("params-*.yaml")]
    mine = [p for p in written if p["run"]["targets"] == ["IsA"]]
    assert len(mine) == 1
    assert mine[0]["train"]["steps"] == 10 and mine[0]["run"]["seeds"] == [0]
    assert not [key for key in mine[0] if "__" in key or "." in key]
    assert config.from_mapping(mine[0], SCHEMA).train.steps == 10


@pytest.mark.parametrize(
    "override, expected",
    [
        ("trian=1", [r"params key 'trian': unknown; valid keys here: ", "controllm", "train", "verbalize"]),
        ("train__stpes=1", [r"params key 'train.stpes': unknown; valid keys here: ", "batch", "lr", "steps"]),
        (
            "run__targets=[Nope]",
            [r"params key 'run.targets': 'Nope' is not defined under 'targets'; defined: ", "IsA", "csqa1"],
        ),
        (
            "mask__granularity=rows",
            [
                r"params key 'mask.granularity': 'rows' is not allowed; expected one of: "
                r"weight, neuron_in, neuron_out"
            ],
        ),
        ("train__steps=ten", [r"params key 'train.steps': expected integer, got 'ten'"]),
    ],
    ids=["unknown-key", "unknown-nested-key", "unknown-target", "enum", "type"],
)
def test_snakemake_rejects_a_bad_override_in_one_line(proj, override, expected):
    proc = run([BIN / "snakemake", "-n", "--config", override], proj, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert errors[0].startswith("error: params.yaml + --config: ")
    for fragment in expected:
        assert fragment in errors[0], errors[0]
    # no traceback, no schema: the only other line is Snakemake's note on the --config
    assert len(output.strip().splitlines()) <= 2, output
    assert "Traceback" not in output and "Failed validating" not in output and "$schema" not in output


# -- params_yaml.py --set (make params SET=...) --------------------------------------------------


def test_params_yaml_set_changes_only_the_named_keys():
    module = _params_yaml_module()
    sets = ["train.steps=10", "run.seeds=[0]", "data.mirror=null", "train__batch__targetkg=3"]
    text = module.render("demo", sets)
    assert 'SET="train.steps=10 run.seeds=[0] data.mirror=null train__batch__targetkg=3"' in text.splitlines()[1]
    got = yaml.safe_load(text)
    want = config.merge_files(module.sources("demo"))
    want["train"]["steps"], want["run"]["seeds"], want["data"]["mirror"] = 10, [0], None
    want["train"]["batch"]["targetkg"] = 3
    assert got == want


def test_params_yaml_set_merges_a_mapping_into_its_section():
    got = yaml.safe_load(_params_yaml_module().render(None, ["train.batch={targetkg: 5}"]))
    base = config.merge_files(_params_yaml_module().sources(None))
    assert got["train"]["batch"] == {**base["train"]["batch"], "targetkg": 5}


@pytest.mark.parametrize(
    "text, message",
    [
        ("train.steps", r"--set 'train\.steps': expected KEY=VALUE with a dotted key"),
        ("=3", r"expected KEY=VALUE"),
        ("train..steps=1", r"expected KEY=VALUE"),
        ("run.seeds=[0", r"--set 'run\.seeds=\[0': the value is not valid YAML"),
        ("train.stpes=1", r"params key 'train\.stpes': unknown; valid keys here: .*\bsteps\b"),
        ("train.steps=ten", r"params key 'train\.steps': expected integer, got 'ten'"),
        ("run.targets=[Nope]", r"params key 'run\.targets': 'Nope' is not defined under 'targets'; defined: .*IsA"),
    ],
)
def test_params_yaml_rejects_a_bad_set(tmp_path, text, message):
    out = tmp_path / "params.yaml"
    with pytest.raises(InputError, match=message):
        _params_yaml_module().main(["--set", text, "--out", str(out)])
    assert not out.exists()


def test_params_yaml_cli_error_is_one_line_and_exit_2(tmp_path):
    out = tmp_path / "params.yaml"
    proc = subprocess.run(
        [sys.executable, REPO_ROOT / "workflow" / "params_yaml.py", "--set", "trian.steps=1", "--out", out],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert "params key 'trian': unknown; valid keys here: " in proc.stderr
    assert not out.exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_params_passes_each_set_word_as_one_set():
    venv = Path(sys.executable).parent.parent
    proc = run(
        [
            "make",
            "-n",
            "-o",
            f"{venv}/.installed",
            "params",
            f"VENV={venv}",
            "PRESET=demo",
            "SET=train.steps=10 run.seeds=[0]",
        ],
        REPO_ROOT,
    )
    assert "params_yaml.py --preset demo --set 'train.steps=10' --set 'run.seeds=[0]'" in proc.stdout
    assert "workflow/dvc_yaml.py dvc.yaml" in proc.stdout  # dvc.yaml follows params.yaml's `run`


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_run_without_a_local_mirror_downloads_and_says_so(proj):
    assert not (proj.parent / "shared" / "data").exists()
    venv = Path(sys.executable).parent.parent

    def recipe(target):
        lines = run(["make", "-n", "-o", f"{venv}/.installed", target, f"VENV={venv}"], proj).stdout.splitlines()
        note = next(line for line in lines if line.startswith("echo "))
        return run(["sh", "-c", note], proj).stdout.strip(), lines

    note, lines = recipe("run")  # the main job: the demo preset, which downloads unless mirror-local.yaml is given
    assert note == "make run: no local mirror ../shared/data: the datasets download from their canonical sources"
    assert any("config/overlays/demo-short.yaml" in line for line in lines)
    assert not any("mirror-local.yaml" in line for line in lines)
    note, lines = recipe("run-tiny")  # params.yaml reads the mirror: switched off
    assert note == (
        "make run-tiny: no local mirror ../shared/data, so data.mirror=null: the datasets download "
        "from their canonical sources"
    )
    assert any("snakemake --cores" in line and line.rstrip().endswith("--config data__mirror=null") for line in lines)


# -- a missing data mirror -------------------------------------------------------------------------


def test_a_missing_mirror_says_how_to_download_instead(tmp_path, monkeypatch):
    from knowsubnet.data.fetch import fetch_data

    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as err:
        fetch_data(tmp_path / "raw", "../no/such/mirror")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("params key 'data.mirror': the mirror folder ../no/such/mirror")
    assert f"(from {tmp_path})" in message  # a relative mirror is relative to where the stage runs
    assert "data.mirror: null" in message and "--config data__mirror=null" in message
    assert "SET=data.mirror=null" in message
    assert not (tmp_path / "raw").exists()
