"""The stage commands, `knowsubnet <stage>`: each declared once (api.stages), with a subcommand, a library
function taking exactly its arguments, and the rules calling it with only its declared arguments and params."""

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, run_stage

from knowsubnet.api import stages
from knowsubnet.api.stages import RUN_MARK, STAGES, generated_for

ENV = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def test_every_stage_has_a_subcommand_whose_help_names_its_arguments_and_params(capsys):
    for stage in STAGES.values():
        assert run_stage(stage.name, ["--help"]) == 0
        out = capsys.readouterr().out
        assert all(arg.flag in out for arg in stage.args), stage.name
        assert all(key in " ".join(out.split()) for key in stage.params), stage.name
        assert ("--params" in out) == (stage.load != "none")


def test_every_stage_function_takes_exactly_the_declared_keywords():
    for stage in STAGES.values():
        module, name = stage.run.split(":")
        function = getattr(__import__(module, fromlist=[name]), name)
        given = {arg.dest for arg in stage.args} | {"typed": {"params"}, "merged": {"params", "schema"}, "none": set()}[
            stage.load
        ]
        inspect.signature(function).bind(**dict.fromkeys(given))  # raises on a keyword it lacks or misses
        assert len({arg.dest for arg in stage.args}) == len(stage.args), stage.name


def test_the_written_out_choices_are_the_librarys():
    from knowsubnet.downstream.csqa import MODES
    from knowsubnet.evaluation.export import KEEP
    from knowsubnet.method.combination import COMBINATIONS

    assert stages.CSQA_MODES == tuple(MODES) and stages.KEEP == KEEP and stages.COMBINATIONS == tuple(COMBINATIONS)


def test_the_declarations_and_the_command_load_no_stage_module():
    code = (
        "import sys, knowsubnet.api.cli, knowsubnet.api.stages; "
        "print(sorted(m for m in sys.modules if m in ('torch', 'pandas', 'knowsubnet.api.run')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_rule_calls_a_declared_stage_with_its_arguments_and_its_params():
    """Each rule's shell command (placeholder wildcards, as dvc.yaml writes it) calls `knowsubnet <stage>`
    with only that stage's arguments, and its section() params are exactly the declared keys."""
    code = (
        "import sys, json; sys.path.insert(0, 'workflow'); import dvc_yaml; print(json.dumps(dvc_yaml.rule_commands()))"
    )
    rules = json.loads(
        subprocess.run(
            [sys.executable, "-c", code], cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, check=True
        ).stdout
    )
    assert {"discover_mask", "prune_baseline", "sweep_mask", "sweep_select", "report"} <= set(rules)
    called = set()
    # a declared {wildcard} is the rule's wildcard (${item.name}) or a value the rule fixes
    any_part = r"(\$\{item\.\w+\}|[^.]+)"
    for rule, job in rules.items():
        words = job["cmd"].split()
        assert words[0] == "knowsubnet" and words[1] in STAGES, f"rule {rule}: {job['cmd'][:80]}"
        stage = STAGES[words[1]]
        called.add(stage.name)
        flags = {word for word in words if word.startswith("--")}
        assert flags <= {arg.flag for arg in stage.args} | {"--params"}, f"rule {rule}"
        patterns = [re.compile(re.sub(r"\\\{\w+\\\}", lambda _: any_part, re.escape(key))) for key in stage.params]
        assert len(job["params"]) == len(patterns), f"rule {rule}: {job['params']}"
        for pattern, key in zip(patterns, job["params"]):
            assert pattern.fullmatch(key), f"rule {rule}: {key} is not {pattern.pattern}"
    assert called == set(STAGES) - {"build_facts_table"}  # a maintainer's command, no rule


def test_bad_params_stop_with_one_line_and_nothing_written(tmp_path, capsys):
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["train"]["stepz"] = params["train"].pop("steps")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(params))
    out = tmp_path / "out" / "triplets.parquet"
    assert run_stage("extract_triplets", ["--params", str(bad), "--raw", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "train.stepz" in err
    assert not (tmp_path / "out").exists()


def test_a_file_generated_for_another_run_stops_the_stage(tmp_path, capsys):
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["sweep"]["points"] = {"short": {"method": "mask", "set": {"train": {"steps": 3}}}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    argv = ["--params", str(path), "--point", "short", "--out", str(tmp_path / "short.yaml")]

    stale = tmp_path / "dvc.yaml"
    stale.write_text(RUN_MARK + generated_for({**params, "run": {**params["run"], "seeds": [7]}}) + "\nstages: {}\n")
    assert run_stage("sweep_point", [*argv, "--check-run", str(stale)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was generated for" in err and "make dvc.yaml" in err
    assert not (tmp_path / "short.yaml").exists()

    stale.write_text(RUN_MARK + generated_for(params) + "\nstages: {}\n")  # current: the stage runs
    assert run_stage("sweep_point", [*argv, "--check-run", str(stale)]) == 0
    assert yaml.safe_load((tmp_path / "short.yaml").read_text()) == {"train": {"steps": 3}}


@pytest.mark.parametrize("names", [["a"], ["a", "b", "c"]])
def test_sweep_select_needs_one_name_meta_headline_facts_and_wordings_file_per_point(tmp_path, capsys, names):
    argv = [
        "--params",
        str(REPO_ROOT / "params.yaml"),
        "--names",
        *names,
        "--metas",
        "m1.json",
        "m2.json",
        "--headlines",
        "h1.json",
        "h2.json",
        "--facts",
        "f1.parquet",
        "f2.parquet",
        "--wordings",
        "w1.json",
        "w2.json",
        "--out-dir",
        str(tmp_path / "sweep"),
    ]
    assert run_stage("sweep_select", argv) == 2
    assert "expected one of each per point" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()
