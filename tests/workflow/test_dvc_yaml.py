"""dvc.yaml is generated from the Snakemake rules (`make dvc.yaml`): the committed file must be current."""

import os
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO_ROOT

ROOT = REPO_ROOT


def generated() -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(
        [sys.executable, "workflow/dvc_yaml.py"], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout


def test_committed_dvc_yaml_is_the_generated_one():
    text = generated()
    assert (ROOT / "dvc.yaml").read_text() == text, "dvc.yaml is stale: run `make dvc.yaml` and commit it"
    stages = yaml.safe_load(text)["stages"]
    # every stage the default target needs, split per target, and the library modules each imports
    assert set(stages) == {
        "fetch_data",
        "extract_triplets",
        "split_controls",
        "prepare_model",
        "verbalize",
        "tokenize_controllm",
        "discover_mask",
        "finetune_csqa",
        "evaluate_ablation",
        "evaluate_robustness",
        "combine_seeds",
        "report",
        "export_remaining",
    }
    # the export (DVC_STAGES): one stage per seed of export.seeds, read by DVC, so none while it is []
    export = stages["export_remaining"]
    assert export["matrix"] == {"model": "${run.models}", "target": "${run.targets}", "seed": "${export.seeds}"}
    assert export["params"] == ["export.keep", "report.bars", "targets.${item.target}", "triplets.sources"]
    assert export["outs"] == ["results/remaining/${item.model}/${item.target}/seed${item.seed}"]
    # a rule's own matrix (DVC_MATRIX): only the CSQA-linked targets are finetuned
    assert stages["finetune_csqa"]["matrix"]["target"] == ["csqa1"]
    assert stages["finetune_csqa"]["matrix"]["mode"] == "${csqa.modes}"
    assert stages["split_controls"]["matrix"] == {"target": "${run.targets}"}
    assert stages["split_controls"]["params"] == ["split", "targets.${item.target}"]
    for module in (
        "data/encoding",
        "data/factsets",
        "models/prepare",
        "method/training",
        "method/masking",
        "method/objectives",
        "core/digest",
    ):
        assert f"src/knowsubnet/{module}.py" in stages["discover_mask"]["deps"]
    for module in ("scoring/facts", "scoring/templates", "data/encoding"):
        assert f"src/knowsubnet/{module}.py" in stages["verbalize"]["deps"]
    # each stage runs `knowsubnet <stage>`: its deps are the declarations and the stage function's module with
    # what they import, not the command's dispatch (api/cli.py) nor another stage's modules
    for name, entry in stages.items():
        assert entry["cmd"].startswith(f"OMP_NUM_THREADS=1 knowsubnet {name} --params params.yaml "), name
        assert entry["cmd"].endswith(" --check-run dvc.yaml"), name
        assert "src/knowsubnet/api/stages.py" in entry["deps"] and "src/knowsubnet/api/cli.py" not in entry["deps"]
        assert not any(dep.startswith("workflow/") for dep in entry["deps"]), name
    assert "src/knowsubnet/method/discover.py" in stages["discover_mask"]["deps"]
    assert not {
        "src/knowsubnet/api/run.py",
        "src/knowsubnet/evaluation/ablation.py",
        "src/knowsubnet/downstream/csqa/__init__.py",
    } & set(stages["discover_mask"]["deps"])
    assert not any("/method/" in dep or "/models/" in dep for dep in stages["extract_triplets"]["deps"])
    # evaluation reads the mask file (its metadata records granularity and blocks), not `mask` params
    assert "mask" not in stages["evaluate_ablation"]["params"]
    combine = stages["combine_seeds"]
    assert {"known", "verbalize.scored_positions", "eval"} <= set(combine["params"])
    assert "data/processed/splits/${item.target}/targetkg_test.parquet" in combine["deps"]
    assert "*" not in combine["cmd"]  # the run's seeds, not a glob over whatever seed folders exist
    assert stages["evaluate_ablation"]["metrics"] == [
        "results/eval/${item.model}/${item.target}/seed${item.seed}/headline.json"
    ]


def test_a_wrong_params_key_stops_make_dvc_yaml_with_one_line(tmp_path):
    from conftest import project_copy

    proj = project_copy(tmp_path)
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["train"]["stepz"] = params["train"].pop("steps")
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(
        ["make", "dvc.yaml", f"PY={sys.executable}", f"BIN={Path(sys.executable).parent}"],
        cwd=proj,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("make")]
    assert ours == [ours[0]] and "params key 'train.stepz': unknown" in ours[0], proc.stderr
    assert "Traceback" not in proc.stderr
