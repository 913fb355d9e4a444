"""The `knowsubnet` command and the library's entry: what a model argument means, the params a run
records, and bad input stopping before any stage with one line."""

import pytest
from conftest import REPO_ROOT

from knowsubnet.api import cli
from knowsubnet.api.run import build_params, model_spec
from knowsubnet.core.errors import InputError

EXAMPLE = REPO_ROOT / "docs" / "examples" / "capitals"


def test_a_model_is_a_params_name_a_folder_a_gguf_file_or_a_hub_id(tmp_path):
    defined = {"tiny-gpt2": {"source": "tiny"}}
    assert model_spec("tiny-gpt2", defined) == ("tiny-gpt2", {"source": "tiny"})
    (tmp_path / "My Model").mkdir()
    assert model_spec(str(tmp_path / "My Model"), defined) == (
        "My-Model",
        {"source": "local", "path": str(tmp_path / "My Model")},
    )
    (tmp_path / "smol.Q8_0.gguf").write_bytes(b"GGUF")
    assert model_spec(str(tmp_path / "smol.Q8_0.gguf"), defined) == (
        "smol.Q8_0",
        {"source": "gguf", "path": str(tmp_path / "smol.Q8_0.gguf")},
    )
    assert model_spec("HuggingFaceTB/SmolLM2-135M", defined) == (
        "SmolLM2-135M",
        {"source": "hub", "repo_id": "HuggingFaceTB/SmolLM2-135M"},
    )
    with pytest.raises(InputError, match="no such GGUF file"):
        model_spec(str(tmp_path / "absent.gguf"), defined)


def test_the_run_params_hold_only_this_model_target_and_seed_and_the_command_and_library_agree(tmp_path):
    by_sets, model, target = build_params(
        "tiny-gpt2",
        EXAMPLE / "facts.csv",
        templates=EXAMPLE / "templates.yaml",
        seed=3,
        sets=["train.steps=50", f"data.mirror={tmp_path}"],
    )
    by_overrides, *_ = build_params(
        "tiny-gpt2",
        EXAMPLE / "facts.csv",
        templates=EXAMPLE / "templates.yaml",
        seed=3,
        overrides={"train": {"steps": 50}, "data": {"mirror": str(tmp_path)}},
    )
    assert by_sets == by_overrides and (model, target) == ("tiny-gpt2", "facts")
    assert by_sets["run"]["models"] == ["tiny-gpt2"] and by_sets["run"]["seeds"] == [3]
    assert list(by_sets["models"]) == ["tiny-gpt2"] and list(by_sets["targets"]) == ["facts"]
    assert by_sets["targets"]["facts"]["facts"] == str((EXAMPLE / "facts.csv").resolve())
    assert by_sets["split"]["targetkg_holdout"] is True and by_sets["triplets"]["sources"] == ["builtin"]


def test_a_wrong_param_stops_with_one_line_naming_the_key(tmp_path):
    with pytest.raises(InputError, match="train.stepz") as err:
        build_params("tiny-gpt2", EXAMPLE / "facts.csv", sets=["train.stepz=5"])
    assert "\n" not in str(err.value)


def test_the_command_stops_on_a_bad_row_before_any_stage_with_one_line(fresh_relations, tmp_path, capsys):
    facts = tmp_path / "facts.csv"
    facts.write_text("head,relation,tail\nFrance,CapitalOf,Paris\nSpain,CapitalOf,\n")
    with pytest.raises(SystemExit) as exit_:
        cli.main(
            [
                "discover",
                "--model",
                "tiny-gpt2",
                "--facts",
                str(facts),
                "--templates",
                str(EXAMPLE / "templates.yaml"),
                "--out",
                str(tmp_path / "run"),
            ]
        )
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.count("\n") == 0 and f"{facts}:3: column 'tail'" in err
    assert not (tmp_path / "run").exists()  # nothing written
