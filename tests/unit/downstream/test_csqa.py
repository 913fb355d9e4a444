"""CommonsenseQA finetuning: question-id plumbing, groups, held-at-zero weights, bad inputs."""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import byte_bpe_tokenizer
from conftest import base_params
from knowsubnet.core.errors import InputError
from knowsubnet.data.splits import write_splits
from knowsubnet.data.splits import make_splits, select_target, write_target_splits
from knowsubnet.data.triplets import TABLE_COLUMNS, merge_facts, read_best_format
from knowsubnet.downstream import csqa
from knowsubnet.method import masking
from conftest import REPO_ROOT

pytestmark = pytest.mark.usefixtures("one_thread")

# Made-up questions (no dataset text): ids q0..q39; q0-q3 linked to half 1, q4-q7 to half 2.
WORDS = ["apple", "river", "stone", "cloud", "bread", "chair", "light", "music", "paper", "glass"]


def _question(i: int, n_choices: int = 5, answer: str | None = None) -> dict:
    choices = [{"label": "ABCDE"[j] if j < 5 else "F", "text": WORDS[(i + j) % len(WORDS)]}
               for j in range(n_choices)]
    return {"answerKey": answer or "ABCDE"[i % 5], "id": f"q{i}",
            "question": {"question_concept": WORDS[i % 10], "choices": choices,
                         "stem": f"where is the {WORDS[i % 10]} near the {WORDS[(i * 3) % 10]}?"}}


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _write_best_format(path, items):
    path.write_text(json.dumps(items))
    return path


@pytest.fixture
def csqa_files(tmp_path):
    train = _write_jsonl(tmp_path / "train.jsonl", [_question(i) for i in range(40)])
    dev = _write_jsonl(tmp_path / "dev.jsonl", [_question(100 + i) for i in range(12)])
    half1 = [{"head": WORDS[i], "rel": "AtLocation", "tail": WORDS[i + 1], "id": f"q{i}"} for i in range(4)]
    half2 = [{"head": WORDS[i + 4], "rel": "UsedFor", "tail": WORDS[i + 5], "id": f"q{i + 4}"} for i in range(4)]
    control = [{"head": "dog", "rel": "IsA", "tail": "animal"}, {"head": "cat", "rel": "IsA", "tail": "pet"},
               {"head": "car", "rel": "UsedFor", "tail": "driving"}]
    facts = (list(read_best_format(_write_best_format(tmp_path / "h1.json", half1), "know_subnet/csqa/csqa1_targetkg"))
             + list(read_best_format(_write_best_format(tmp_path / "h2.json", half2),
                                     "know_subnet/csqa/csqa2_targetkg"))
             + list(read_best_format(_write_best_format(tmp_path / "c.json", control),
                                     "know_subnet/controlkg_train")))
    return {"train": train, "dev": dev, "triplets": merge_facts(facts)}


# ---------------------------------------------------------------------------------------------
# question-id plumbing


def test_question_ids_reach_the_triplets_and_the_splits(csqa_files, tmp_path):
    table = csqa_files["triplets"]
    assert list(table.columns) == TABLE_COLUMNS
    linked = table[table["csqa_ids"] != ""]
    assert sorted(linked["csqa_ids"]) == [f"q{i}" for i in range(8)]
    assert (table[table["source"] == "know_subnet/controlkg_train"]["csqa_ids"] == "").all()
    splits = make_splits(table, "csqa1", {"csqa": "csqa1"}, seed=0,
                         fractions={"train": 0.8, "val": 0.1, "test": 0.1}, targetkg_holdout=False,
                         max_targetkg=None, max_controlkg=None)
    assert sorted(splits["targetkg_test"]["csqa_ids"]) == ["q0", "q1", "q2", "q3"]
    assert "csqa_ids" in splits["controlkg_train"].columns
    # both split writers keep the ids (finetune_csqa reads them from the split files)
    write_target_splits(tmp_path / "one", "csqa1", splits)
    write_splits(tmp_path / "all", {"csqa1": splits})
    for written in (tmp_path / "one", tmp_path / "all" / "csqa1"):
        assert sorted(pd.read_parquet(written / "targetkg_test.parquet")["csqa_ids"]) == ["q0", "q1", "q2", "q3"]
    by_ids = select_target(table, "some", {"csqa": ["q5", "q2"]})
    assert sorted(by_ids["csqa_ids"]) == ["q2", "q5"]
    assert sorted(select_target(table, "h2", {"csqa": "csqa2"})["csqa_ids"]) == ["q4", "q5", "q6", "q7"]


def test_a_fact_in_both_halves_keeps_both_ids(tmp_path):
    item = {"head": "a", "rel": "IsA", "tail": "b"}
    facts = (list(read_best_format(_write_best_format(tmp_path / "1.json", [dict(item, id="x1")]),
                                   "know_subnet/csqa/csqa1_targetkg"))
             + list(read_best_format(_write_best_format(tmp_path / "2.json", [dict(item, id="x2")]),
                                     "know_subnet/csqa/csqa2_targetkg")))
    table = merge_facts(facts)
    assert table["csqa_ids"].tolist() == ["x1;x2"]


def test_unknown_question_id_in_a_selector_is_named(csqa_files):
    with pytest.raises(InputError, match=r"targets\.bad\.csqa.*'nope'"):
        select_target(csqa_files["triplets"], "bad", {"csqa": ["q1", "nope"]})
    with pytest.raises(InputError, match=r"targets\.bad\.csqa"):
        select_target(csqa_files["triplets"], "bad", {"csqa": "csqa3"})


# ---------------------------------------------------------------------------------------------
# groups


def test_groups_do_not_overlap_with_training(csqa_files):
    table = csqa_files["triplets"]
    target = select_target(table, "csqa1", {"csqa": "csqa1"})
    groups = csqa.question_groups(table, target)
    assert groups["removed"] == {"q0", "q1", "q2", "q3"}
    assert groups["kept"] == {"q4", "q5", "q6", "q7"}
    train = csqa.read_questions(csqa_files["train"])
    dev = csqa.read_questions(csqa_files["dev"])
    train_set, eval_groups = csqa.assemble_data(train, dev, groups, None, 5, seed=3)
    train_ids = {q.id for q in train_set}
    assert len(train_ids) == 32
    assert not train_ids & (groups["linked"])
    assert [q.id for q in eval_groups["removed"]] == ["q0", "q1", "q2", "q3"]
    assert {q.id for q in eval_groups["kept"]} == {"q4", "q5", "q6", "q7"}
    assert len(eval_groups["dev"]) == 5 and {q.id for q in eval_groups["dev"]} <= {q.id for q in dev}
    # a capped TargetKG: the selected-but-dropped questions are in no group and not trained on
    capped = target[target["csqa_ids"] != "q3"]
    groups = csqa.question_groups(table, capped, target)
    assert groups["removed"] == {"q0", "q1", "q2"} and "q3" not in groups["kept"]
    train_set, _ = csqa.assemble_data(train, dev, groups, 10, None, seed=0)
    assert len(train_set) == 10 and "q3" not in {q.id for q in train_set}


def test_linked_question_missing_from_csqa_train_is_named(csqa_files, tmp_path):
    table = csqa_files["triplets"]
    groups = csqa.question_groups(table, select_target(table, "csqa1", {"csqa": "csqa1"}))
    short = _write_jsonl(tmp_path / "short.jsonl", [_question(i) for i in range(1, 40)])
    train = csqa.read_questions(short)
    with pytest.raises(InputError, match=r"short\.jsonl: question id 'q0'"):
        csqa.assemble_data(train, train, groups, None, None, seed=0, train_source=str(short))


# ---------------------------------------------------------------------------------------------
# bad CSQA input


@pytest.mark.parametrize("line, message", [
    ("{not json", r"bad\.jsonl:2: expected a JSON object"),
    (json.dumps(_question(1, n_choices=4)), r"bad\.jsonl:2: expected 5 choices .* got 4"),
    (json.dumps(_question(1, n_choices=6)), r"bad\.jsonl:2: expected 5 choices .* got 6"),
    (json.dumps(_question(1, answer="F")), r"bad\.jsonl:2: expected 'answerKey'"),
    (json.dumps({"id": "x", "answerKey": "A"}), r"bad\.jsonl:2: expected key 'question'"),
    (json.dumps(_question(0)), r"bad\.jsonl:2: question id 'q0' repeats line 1"),
])
def test_bad_csqa_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_question(0)) + "\n" + line + "\n")
    with pytest.raises(InputError, match=message):
        csqa.read_questions(path)


def test_bad_settings_name_the_params_key():
    with pytest.raises(InputError, match=r"csqa\.modes"):
        base_params({"csqa": {"modes": ["prompt"]}})
    with pytest.raises(InputError, match=r"csqa\.lr\.lora"):
        base_params({"csqa": {"lr": {"lora": 0}}})


# ---------------------------------------------------------------------------------------------
# finetuning on a tiny GPT-2: removed weights stay exactly zero in every mode


@pytest.fixture(scope="module")
def tiny_setup():
    from transformers import GPT2Config, GPT2LMHeadModel

    questions = [csqa.Question(f"q{i}", f"where is the {WORDS[i % 10]} near the {WORDS[(i * 3) % 10]}?",
                               tuple(WORDS[(i + j) % 10] for j in range(5)), i % 5) for i in range(30)]
    corpus = "\n".join(csqa.question_text(q.stem, c) for q in questions for c in q.choices)
    tokenizer = byte_bpe_tokenizer(corpus, 300)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=len(tokenizer), n_positions=48,
                                       bos_token_id=0, eos_token_id=0)).eval()
    model.requires_grad_(False)
    layers = masking.find_maskable_layers(model, 1)
    gen = torch.Generator().manual_seed(1)
    logits = {l.name: torch.randn(l.mask_shape("weight"), generator=gen) - 1.0 for l in layers}
    groups = {"removed": questions[20:24], "kept": questions[24:27], "dev": questions[27:30]}
    return model, tokenizer, layers, logits, questions[:20], groups


def _settings(**over):
    return base_params({"csqa": {"batch_size": 4, "eval_batch_size": 8, "bootstrap": 50, "max_length": 40,
                                 "log_every": 2, "checkpoint_every": 3, "epochs": {"head": 2, "lora": 1, "full": 1},
                                 "lr": {"head": 0.05, "lora": 0.05, "full": 0.01}, **over}}).csqa


@pytest.mark.parametrize("mode", ["head", "lora", "full"])
def test_removed_weights_stay_exactly_zero(tiny_setup, mode, tmp_path):
    model, tokenizer, layers, logits, train, groups = tiny_setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuner = csqa.CSQAFinetuner(model, tokenizer, layers, logits, "weight", mode, train, groups, _settings(), seed=0,
                               progress=False)
    removed = tuner.removed["remaining"]
    assert sum(int(m.sum()) for m in removed.values()) > 0
    variant = csqa.Variant(model, tuner.layer_names, tuner.transposed, removed, mode, tuner.settings, 0,
                           torch.device("cpu"), tuner.first_block)
    start = csqa.effective_weights(variant.model, tuner.layer_names, removed, mode)
    features = tuner._all_features(variant) if mode == "head" else None
    for step in range(4):
        index = tuner._step_index(step)
        scores = tuner._scores(variant, "train", index, features).view(-1, 5)
        loss = torch.nn.functional.cross_entropy(scores, tuner.train_enc.labels[index])
        variant.optimizer.zero_grad()
        loss.backward()
        variant.optimizer.step()
        variant.rezero()
    after = csqa.effective_weights(variant.model, tuner.layer_names, removed, mode)
    changed = False
    for name in tuner.layer_names:
        assert bool((after[name][removed[name]] == 0).all()), f"{mode}: a removed weight of {name} moved"
        changed |= not torch.equal(after[name][~removed[name]], start[name][~removed[name]])
    if mode != "head":
        assert changed, f"{mode}: finetuning changed no kept weight of the masked layers"
    # the layers' forward really uses the effective weight: zeroing it by hand changes nothing
    if mode == "lora":
        name = tuner.layer_names[0]
        module = variant.model.get_submodule(name)
        x = torch.randn(3, module.base_layer.weight.shape[0])
        expected = x @ after[name] + module.base_layer.bias
        assert torch.allclose(module(x), expected, atol=1e-6)
    variant.close()
    for key, value in model.state_dict().items():  # the caller's model is untouched
        assert torch.equal(value, before[key]), key


def _lora_tuner(setup, settings=None, **kw):
    model, tokenizer, layers, logits, train, groups = setup
    return csqa.CSQAFinetuner(model, tokenizer, layers, logits, "weight", "lora", train, groups,
                              settings or _settings(), seed=0, progress=False, **kw)


@pytest.fixture(scope="module")
def plain_lora(tiny_setup):
    """An uninterrupted lora run without a checkpoint: what a resumed or restarted run must equal."""
    return _lora_tuner(tiny_setup).run()


def _assert_same_run(result, plain):
    for v in ("original", "remaining", "random"):
        assert result["variants"][v]["groups"] == plain["variants"][v]["groups"]
        assert result["variants"][v]["curve"] == plain["variants"][v]["curve"]
    assert result["per_question_correct"] == plain["per_question_correct"]
    assert result["delta_vs_original"] == plain["delta_vs_original"]


def test_full_run_is_resumable_and_reproducible(tiny_setup, plain_lora, tmp_path):
    ckpt = tmp_path / "lora.ckpt"

    def make(**kw):
        return _lora_tuner(tiny_setup, **kw)

    plain = plain_lora
    assert set(plain["variants"]) == {"original", "remaining", "random"}
    for v in ("remaining", "random"):
        assert plain["variants"][v]["max_abs_removed_weight"] == 0.0
    group = plain["variants"]["remaining"]["groups"]["removed"]
    assert group["n"] == 4 and group["ci95"][0] <= group["acc"] <= group["ci95"][1]
    assert plain["variants"]["original"]["curve"][-1]["step"] == plain["steps"] == 5
    assert set(plain["delta_vs_original"]["remaining"]) == {"removed", "kept", "dev"}

    # interrupted after the first checkpoint of the second variant, then resumed
    tuner = make(checkpoint_path=ckpt)
    real = tuner._run_variant
    calls = []

    def flaky(name, done, current):
        calls.append(name)
        if name == "remaining" and len(calls) == 2:
            original_save = tuner._save

            def save_then_stop(d, cur):
                original_save(d, cur)
                if cur is not None:
                    raise KeyboardInterrupt

            tuner._save = save_then_stop
            try:
                return real(name, done, current)
            finally:
                tuner._save = original_save
        return real(name, done, current)

    tuner._run_variant = flaky
    with pytest.raises(KeyboardInterrupt):
        tuner.run()
    assert ckpt.is_file()
    resumed = make(checkpoint_path=ckpt).run()
    _assert_same_run(resumed, plain)


@pytest.mark.parametrize("stale", ["other_params", "unreadable"])
def test_stale_or_unreadable_checkpoint_is_set_aside(tiny_setup, plain_lora, tmp_path, caplog, stale):
    """core.checkpoint's policy: a checkpoint written for other params, or unreadable, is set aside with
    one warning and the run starts from scratch, ending as an uninterrupted run."""
    ckpt = tmp_path / "lora.ckpt"
    if stale == "unreadable":
        ckpt.write_bytes(b"not a checkpoint")
        expected = "unreadable checkpoint"
    else:
        # every variant done with every answer right, but at another learning rate: resuming it would be wrong
        assert "0" in "".join(bits for v in plain_lora["per_question_correct"].values() for bits in v.values())
        done = {v: {**plain_lora["variants"][v], "correct": {g: "1" * len(bits) for g, bits in correct.items()}}
                for v, correct in plain_lora["per_question_correct"].items()}
        other_lr = _settings(lr={"head": 0.05, "lora": 0.02, "full": 0.01})
        _lora_tuner(tiny_setup, other_lr, checkpoint_path=ckpt)._save(done, None)
        expected = "checkpoint was written for other inputs (changed: settings)"
    with caplog.at_level(logging.WARNING, logger="knowsubnet.core.checkpoint"):
        result = _lora_tuner(tiny_setup, checkpoint_path=ckpt).run()
    warnings = [r.getMessage() for r in caplog.records if r.name == "knowsubnet.core.checkpoint"]
    assert len(warnings) == 1 and expected in warnings[0] and "starting from scratch" in warnings[0]
    _assert_same_run(result, plain_lora)


def test_bootstrap_interval_and_paired_delta():
    values = np.array([1.0] * 30 + [0.0] * 70)
    lo, hi = csqa.bootstrap_ci(values, 500, 0, 0)
    assert lo < 0.3 < hi and 0.15 < lo and hi < 0.45
    same = csqa.paired_delta(values, values, 200, 0, 0)
    assert same["diff"] == 0.0 and same["ci95"] == [0.0, 0.0]


# ---------------------------------------------------------------------------------------------
# the report's CSQA section


def _csqa_record(model, target, seed, mode, accs):
    """A finetune_csqa-shaped result; accs[variant] = (removed, kept, dev) accuracies."""
    variants = {v: {"groups": {g: {"acc": a, "ci95": [a - 0.1, a + 0.1], "n": 50}
                               for g, a in zip(csqa.GROUPS, accs[v])}, "curve": []} for v in csqa.VARIANTS}
    delta = {v: {g: {"diff": accs[v][i] - accs["original"][i], "ci95": [-0.2, 0.1], "n": 50}
                 for i, g in enumerate(csqa.GROUPS)} for v in ("remaining", "random")}
    return {"model": model, "target": target, "seed": seed, "mode": mode, "variants": variants,
            "delta_vs_original": delta}


def test_report_csqa_section(tmp_path):
    from knowsubnet.report import build as report
    from knowsubnet.report.csqa import load_csqa_results
    from conftest import write_report_inputs as write_inputs

    accs = {"original": (0.6, 0.5, 0.4), "remaining": (0.3, 0.5, 0.35), "random": (0.6, 0.45, 0.4)}
    paths = []
    for mode in ("head", "lora"):
        path = tmp_path / "csqa" / "m" / "csqa1" / "seed0" / f"{mode}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_csqa_record("m", "csqa1", 0, mode, accs)))
        paths.append(path)
    metrics_paths, mask_paths, log_paths = write_inputs(tmp_path)
    written = report.build_report(metrics_paths, out_dir=tmp_path, params=base_params({"report": {"dpi": 40}}),
                                  csqa_paths=paths)
    table = pd.read_csv(tmp_path / "tables" / "csqa.csv")
    assert len(table) == 2 * 3 * 3
    row = table[(table["mode"] == "lora") & (table["variant"] == "remaining") & (table["group"] == "removed")]
    assert float(row["acc"].iloc[0]) == 0.3 and float(row["diff_vs_original"].iloc[0]) == pytest.approx(-0.3)
    delta_md = (tmp_path / "tables" / "csqa_delta.md").read_text()
    assert "-30.0 pts" in delta_md and "+0.0 pts" in delta_md  # removed group vs kept group
    assert written["fig_csqa"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (tmp_path / "report.md").read_text()
    assert "## CommonsenseQA after finetuning" in text and "figures/csqa.png" in text
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "m"}))
    with pytest.raises(InputError, match=r"bad\.json: expected key 'target'"):
        load_csqa_results([bad])


# ---------------------------------------------------------------------------------------------
# the workflow: only CSQA-linked targets are finetuned, one job per mode


def test_snakemake_finetunes_only_csqa_targets():
    import subprocess
    import sys
    from pathlib import Path

    root = REPO_ROOT
    snakemake = Path(sys.executable).parent / "snakemake"
    proc = subprocess.run([str(snakemake), "results/report.md", "-n", "--nolock", "--forceall", "--configfile",
                           "config/presets/demo.yaml"], cwd=root, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-2000:]
    jobs = sorted(set(line.split("output: ")[1] for line in out.splitlines()
                      if "output: results/csqa/" in line))
    assert jobs == [f"results/csqa/smollm2-135m/csqa1/seed0/{mode}.json" for mode in ("head", "lora")]


# ---------------------------------------------------------------------------------------------
# the stage end to end on a toy model directory, and its command line


def test_finetune_csqa_stage(csqa_files, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    table = csqa_files["triplets"]
    table.to_parquet(tmp_path / "triplets.parquet", index=False)
    splits = make_splits(table, "csqa1", {"csqa": "csqa1"}, seed=0, fractions={"train": 0.8, "val": 0.1, "test": 0.1},
                         targetkg_holdout=False, max_targetkg=None, max_controlkg=None)
    write_splits(tmp_path / "splits", {"csqa1": splits})
    csqa_dir = tmp_path / "csqa"
    csqa_dir.mkdir()
    csqa_files["train"].rename(csqa_dir / "train_rand_split.jsonl")
    csqa_files["dev"].rename(csqa_dir / "dev_rand_split.jsonl")
    corpus = "\n".join(csqa.question_text(q.stem, c) for q in csqa.read_questions(csqa_dir / "train_rand_split.jsonl")
                       for c in q.choices)
    tokenizer = byte_bpe_tokenizer(corpus, 300)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=len(tokenizer), n_positions=48,
                                       bos_token_id=0, eos_token_id=0, pad_token_id=0))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    layers = masking.find_maskable_layers(model, 1)
    gen = torch.Generator().manual_seed(0)
    masking.save_mask(tmp_path / "mask.safetensors",
                      {l.name: torch.randn(l.mask_shape("weight"), generator=gen) - 1.5 for l in layers},
                      {"granularity": "weight", "top_k_blocks": 1, "model": "toy", "target": "csqa1", "seed": 0})
    params = base_params({"targets": {"csqa1": {"csqa": "csqa1"}},
                          "csqa": {"modes": ["lora"], "train_questions": 12, "dev_questions": 6, "batch_size": 4,
                                   "epochs": {"lora": 1}, "max_length": 40, "bootstrap": 50, "device": "cpu"}})
    out = tmp_path / "results" / "lora.json"
    paths = {"model_dir": tmp_path / "model", "mask": tmp_path / "mask.safetensors",
             "triplets": tmp_path / "triplets.parquet", "splits_dir": tmp_path / "splits" / "csqa1",
             "csqa_dir": csqa_dir, "out": out}
    returned = csqa.run_stage(params, model="toy", target="csqa1", seed=0, mode="lora", **paths)
    result = json.loads(out.read_text())
    assert result["per_question_correct"] == returned["per_question_correct"]
    assert result["groups"]["removed"]["question_ids"] == ["q0", "q1", "q2", "q3"]
    assert result["groups"]["kept"]["n"] == 4 and result["groups"]["dev"]["n"] == 6 and result["n_train"] == 12
    assert result["variants"]["remaining"]["max_abs_removed_weight"] == 0.0
    assert "code_version" in result["provenance"] and result["provenance"]["params"]["target"] == {"csqa": "csqa1"}
    assert not list(out.parent.glob(".*ckpt"))  # the checkpoint is gone once the result is written

    # a choice count other than five stops with the file and line
    lines = (csqa_dir / "dev_rand_split.jsonl").read_text().splitlines()
    row = json.loads(lines[2])
    row["question"]["choices"] = row["question"]["choices"][:3]
    lines[2] = json.dumps(row)
    (csqa_dir / "dev_rand_split.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"dev_rand_split\.jsonl:3: expected 5 choices"):
        csqa.run_stage(params, model="toy", target="csqa1", seed=0, mode="lora", **paths)


def test_finetune_csqa_script_passes_its_arguments_to_run_stage(tmp_path, monkeypatch, capsys):
    """The script is a shim: its command line (used by downstream.smk and dvc.yaml) maps onto
    `run_stage`'s arguments; an InputError exits with code 2 and the message."""
    script = importlib.import_module("finetune_csqa")  # workflow/scripts is on sys.path (conftest)
    repo = REPO_ROOT
    calls = []
    monkeypatch.setattr(script, "run_stage", lambda params, **kw: calls.append((params, kw)))
    argv = ["--params", str(repo / "config" / "base.yaml"), "--model", "toy", "--target", "csqa1", "--seed", "3",
            "--mode", "head", "--model-dir", "m", "--mask", "k.safetensors", "--triplets", "t.parquet",
            "--splits", "s", "--csqa-dir", "c", "--out", str(tmp_path / "head.json")]
    with pytest.raises(SystemExit) as exit_info:
        script.main(argv)
    assert exit_info.value.code == 0
    (params, kw), = calls
    assert params.csqa.modes  # the typed params of --params
    assert kw == {"model": "toy", "target": "csqa1", "seed": 3, "mode": "head", "model_dir": Path("m"),
                  "mask": Path("k.safetensors"), "triplets": Path("t.parquet"), "splits_dir": Path("s"),
                  "csqa_dir": Path("c"), "out": tmp_path / "head.json"}

    def bad_input(params, **kw):
        raise InputError("dev_rand_split.jsonl:3: expected 5 choices (labels A, B, C, D, E), got 3")

    monkeypatch.setattr(script, "run_stage", bad_input)
    with pytest.raises(SystemExit) as exit_info:
        script.main(argv)
    assert exit_info.value.code == 2
    assert "dev_rand_split.jsonl:3: expected 5 choices" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        script.main(argv[:argv.index("--mode") + 1] + ["prompt"] + argv[argv.index("--mode") + 2:])
    assert exit_info.value.code == 2  # argparse: --mode is one of csqa.MODES
