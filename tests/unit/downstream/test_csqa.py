"""CommonsenseQA finetuning: question-id plumbing, groups, held-at-zero weights, bad inputs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO_ROOT, base_params, byte_bpe_tokenizer, run_stage, split_choices

from knowsubnet.core.errors import InputError
from knowsubnet.data.splits import make_splits, select_target, write_splits, write_target_splits
from knowsubnet.data.triplets import TABLE_COLUMNS, merge_facts, read_best_format
from knowsubnet.downstream import csqa
from knowsubnet.method import masking

pytestmark = pytest.mark.usefixtures("one_thread")

# Made-up questions (no dataset text): ids q0..q39; q0-q3 linked to half 1, q4-q7 to half 2.
WORDS = ["apple", "river", "stone", "cloud", "bread", "chair", "light", "music", "paper", "glass"]


# Siblings of linked questions: q38 (concept of q0, 3 shared choices), q39 (of q1); q35 has q0's
# concept but no shared choice, so it is not one.
CONCEPTS = {38: "c0", 39: "c1", 35: "c0"}


def _question(i: int, n_choices: int = 5, answer: str | None = None) -> dict:
    choices = [{"label": "ABCDE"[j] if j < 5 else "F", "text": WORDS[(i + j) % len(WORDS)]} for j in range(n_choices)]
    return {
        "answerKey": answer or "ABCDE"[i % 5],
        "id": f"q{i}",
        "question": {
            "question_concept": CONCEPTS.get(i, f"c{i}"),
            "choices": choices,
            "stem": f"where is the {WORDS[i % 10]} near the {WORDS[(i * 3) % 10]}?",
        },
    }


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
    control = [
        {"head": "dog", "rel": "IsA", "tail": "animal"},
        {"head": "cat", "rel": "IsA", "tail": "pet"},
        {"head": "car", "rel": "UsedFor", "tail": "driving"},
    ]
    facts = (
        list(read_best_format(_write_best_format(tmp_path / "h1.json", half1), "know_subnet/csqa/csqa1_targetkg"))
        + list(read_best_format(_write_best_format(tmp_path / "h2.json", half2), "know_subnet/csqa/csqa2_targetkg"))
        + list(read_best_format(_write_best_format(tmp_path / "c.json", control), "know_subnet/controlkg_train"))
    )
    return {"train": train, "dev": dev, "triplets": merge_facts(facts)}


# ---------------------------------------------------------------------------------------------
# question-id plumbing


def test_question_ids_reach_the_triplets_and_the_splits(csqa_files, tmp_path):
    table = csqa_files["triplets"]
    assert list(table.columns) == TABLE_COLUMNS
    linked = table[table["csqa_ids"] != ""]
    assert sorted(linked["csqa_ids"]) == [f"q{i}" for i in range(8)]
    assert (table[table["source"] == "know_subnet/controlkg_train"]["csqa_ids"] == "").all()
    splits = make_splits(
        table,
        "csqa1",
        {"csqa": "csqa1"},
        seed=0,
        fractions={"train": 0.8, "val": 0.1, "test": 0.1},
        targetkg_holdout=False,
        max_targetkg=None,
        max_controlkg=None,
        **split_choices(),
    )
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


def test_paper_controlkg_of_a_csqa_target_is_the_authors_csqa_controlkg(csqa_files, tmp_path):
    """split.controlkg paper: a CSQA-linked target takes the authors' CSQA ControlKG files (train;
    val for val and test), a concept or relation target the LAMA ControlKG files."""
    train = [{"head": "pen", "rel": "UsedFor", "tail": "writing"}, {"head": "cup", "rel": "UsedFor", "tail": "tea"}]
    val = [{"head": "bed", "rel": "AtLocation", "tail": "bedroom"}]
    facts = list(
        read_best_format(_write_best_format(tmp_path / "ct.json", train), "know_subnet/csqa/csqa_controlkg_train")
    ) + list(read_best_format(_write_best_format(tmp_path / "cv.json", val), "know_subnet/csqa/csqa_controlkg_val"))
    table = merge_facts(
        facts
        + list(
            read_best_format(
                _write_best_format(
                    tmp_path / "h1.json", [{"head": "apple", "rel": "AtLocation", "tail": "river", "id": "q0"}]
                ),
                "know_subnet/csqa/csqa1_targetkg",
            )
        )
        + list(
            read_best_format(
                _write_best_format(tmp_path / "c.json", [{"head": "dog", "rel": "IsA", "tail": "animal"}]),
                "know_subnet/controlkg_train",
            )
        )
        + list(
            read_best_format(
                _write_best_format(tmp_path / "v.json", [{"head": "cat", "rel": "IsA", "tail": "pet"}]),
                "know_subnet/controlkg_val",
            )
        )
    )
    split = dict(
        seed=0,
        fractions={"train": 0.8, "val": 0.1, "test": 0.1},
        targetkg_holdout=False,
        max_targetkg=None,
        max_controlkg=None,
        **split_choices(controlkg="paper"),
    )
    csqa_splits = make_splits(table, "csqa1", {"csqa": "csqa1"}, **split)
    assert sorted(csqa_splits["controlkg_train"]["head"]) == ["cup", "pen"]
    assert list(csqa_splits["controlkg_val"]["head"]) == list(csqa_splits["controlkg_test"]["head"]) == ["bed"]
    relation_splits = make_splits(table, "AtLocation", {"rel": "AtLocation"}, **split)
    assert list(relation_splits["controlkg_train"]["head"]) == ["dog"]


def test_a_fact_in_both_halves_keeps_both_ids(tmp_path):
    item = {"head": "a", "rel": "IsA", "tail": "b"}
    facts = list(
        read_best_format(
            _write_best_format(tmp_path / "1.json", [dict(item, id="x1")]), "know_subnet/csqa/csqa1_targetkg"
        )
    ) + list(
        read_best_format(
            _write_best_format(tmp_path / "2.json", [dict(item, id="x2")]), "know_subnet/csqa/csqa2_targetkg"
        )
    )
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
    train_set, eval_groups, held = csqa.assemble_data(train, dev, groups, None, 5, seed=3)
    train_ids = {q.id for q in train_set}
    assert held == {"linked": 8, "siblings": 2}
    assert len(train_ids) == 30 and "q35" in train_ids  # same concept as q0 but no shared choice
    assert not train_ids & (groups["linked"] | {"q38", "q39"})  # no linked question nor a sibling of one
    assert [q.id for q in eval_groups["removed"]] == ["q0", "q1", "q2", "q3"]
    assert eval_groups["removed_known"] == eval_groups["removed"]  # no fact status: every removed question
    assert {q.id for q in eval_groups["kept"]} == {"q4", "q5", "q6", "q7"}
    assert len(eval_groups["dev"]) == 5 and {q.id for q in eval_groups["dev"]} <= {q.id for q in dev}
    # a capped TargetKG: the selected-but-dropped questions are in no group and not trained on
    capped = target[target["csqa_ids"] != "q3"]
    groups = csqa.question_groups(table, capped, target)
    assert groups["removed"] == {"q0", "q1", "q2"} and "q3" not in groups["kept"]
    train_set, _, _ = csqa.assemble_data(train, dev, groups, 10, None, seed=0)
    assert len(train_set) == 10 and "q3" not in {q.id for q in train_set}
    # the removed group restricted to the known and suppressed facts' questions
    groups["removed_known"] = {"q1"}
    _, eval_groups, _ = csqa.assemble_data(train, dev, groups, None, None, seed=0)
    assert [q.id for q in eval_groups["removed_known"]] == ["q1"]


def test_no_linked_question_or_sibling_reaches_training_on_csqa(shared_data_mirror):
    """On the real CSQA files and the paper's linked questions: the training set holds no linked
    question and no question sharing a linked question's concept and >= 2 of its choices."""
    train = csqa.read_questions(shared_data_mirror / "commonsenseqa" / "train_rand_split.jsonl")
    dev = csqa.read_questions(shared_data_mirror / "commonsenseqa" / "dev_rand_split.jsonl")
    linked = {
        item["id"]
        for half in ("csqa1", "csqa2")
        for item in json.loads(
            (shared_data_mirror / "know_subnet_derived" / "csqa" / f"{half}_targetkg_best_format.json").read_text()
        )
    }
    groups = {"linked": linked, "removed": set(sorted(linked)[:100]), "kept": set(sorted(linked)[100:])}
    train_set, _, held = csqa.assemble_data(train, dev, groups, None, None, seed=0)
    by_id = {q.id: q for q in train}
    linked_choices = {}
    for qid in linked:
        linked_choices.setdefault(by_id[qid].concept, []).append({c.lower() for c in by_id[qid].choices})
    assert held["siblings"] > 300  # CSQA writes several questions per concept from one set of answers
    for q in train_set:
        assert q.id not in linked
        choices = {c.lower() for c in q.choices}
        assert all(len(choices & other) < 2 for other in linked_choices.get(q.concept, [])), q.id
    assert len(train_set) + len(linked) + held["siblings"] == len(train)


def test_linked_question_missing_from_csqa_train_is_named(csqa_files, tmp_path):
    table = csqa_files["triplets"]
    groups = csqa.question_groups(table, select_target(table, "csqa1", {"csqa": "csqa1"}))
    short = _write_jsonl(tmp_path / "short.jsonl", [_question(i) for i in range(1, 40)])
    train = csqa.read_questions(short)
    with pytest.raises(InputError, match=r"short\.jsonl: question id 'q0'"):
        csqa.assemble_data(train, train, groups, None, None, seed=0, train_source=str(short))


# ---------------------------------------------------------------------------------------------
# bad CSQA input


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r"bad\.jsonl:2: expected a JSON object"),
        (json.dumps(_question(1, n_choices=4)), r"bad\.jsonl:2: expected 5 choices .* got 4"),
        (json.dumps(_question(1, n_choices=6)), r"bad\.jsonl:2: expected 5 choices .* got 6"),
        (json.dumps(_question(1, answer="F")), r"bad\.jsonl:2: expected 'answerKey'"),
        (json.dumps({"id": "x", "answerKey": "A"}), r"bad\.jsonl:2: expected key 'question'"),
        (json.dumps(_question(0)), r"bad\.jsonl:2: question id 'q0' repeats line 1"),
    ],
)
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
    with pytest.raises(InputError, match=r"csqa\.lr"):  # the head's rate is csqa.head_lr
        base_params({"csqa": {"lr": {"head": 0.01}}})


# ---------------------------------------------------------------------------------------------
# packed encoding: one sequence per question gives each choice's own forward


def _tiny_models(vocab: int):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(n_layer=3, n_embd=16, n_head=2, vocab_size=vocab, n_positions=64, bos_token_id=0, eos_token_id=0)
    ).eval()
    llama = LlamaForCausalLM(
        LlamaConfig(
            num_hidden_layers=3,
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_key_value_heads=1,
            vocab_size=vocab,
            max_position_embeddings=64,
            bos_token_id=0,
            eos_token_id=0,
        )
    ).eval()
    return {"gpt2": gpt2, "llama": llama}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_packed_question_equals_each_choice_on_its_own(tiny_setup, arch):
    """The state at a choice's last token in the packed sequence (question once, five choices that
    see only the question and themselves) equals the final state of the plain sequence
    question_text(stem, choice) + end-of-text, through the full model and through the top blocks."""
    from knowsubnet.downstream.csqa.model import gather_choices, prefix_states
    from knowsubnet.models.top_blocks import TopBlocks

    _, tokenizer, _, _, train, _ = tiny_setup
    model = _tiny_models(len(tokenizer))[arch]
    questions = train[:3]
    enc = csqa.encode_questions(tokenizer, questions, 40)
    inputs = csqa.packed_inputs(enc, range(3))
    with torch.no_grad():
        packed = gather_choices(
            model.base_model(
                input_ids=inputs["input_ids"],
                position_ids=inputs["position_ids"],
                attention_mask=inputs["attention_mask"],
            ).last_hidden_state,
            inputs["last"],
        )
        top = TopBlocks(model, 1)
        batch = prefix_states(top, enc, range(3), torch.device("cpu"))
        via_top = gather_choices(
            top.forward(batch["prefix"], position_ids=batch["position_ids"], attention_mask=batch["attention_mask"]),
            batch["last"],
        )
        for i, q in enumerate(questions):
            for k, choice in enumerate(q.choices):
                ids = tokenizer(csqa.question_text(q.stem, choice), add_special_tokens=False)["input_ids"]
                alone = model.base_model(input_ids=torch.tensor([ids + [0]])).last_hidden_state[0, -1]
                assert torch.allclose(packed[i, k], alone, atol=1e-5), (i, k)
                assert torch.allclose(via_top[i, k], alone, atol=1e-5), (i, k)
    # a question too long for max_length is cut from its left; a choice that cannot fit is named
    short = csqa.encode_questions(tokenizer, questions[:1], 12)
    assert all(int(x) < 12 for x in short.positions[0])
    with pytest.raises(InputError, match=r"csqa\.max_length"):
        csqa.encode_questions(tokenizer, questions[:1], 2)


# ---------------------------------------------------------------------------------------------
# finetuning on a tiny GPT-2: removed weights stay exactly zero in every mode


@pytest.fixture(scope="module")
def tiny_setup():
    from transformers import GPT2Config, GPT2LMHeadModel

    questions = [
        csqa.Question(
            f"q{i}",
            f"where is the {WORDS[i % 10]} near the {WORDS[(i * 3) % 10]}?",
            tuple(WORDS[(i + j) % 10] + (" box" if (i + j) % 3 == 0 else "") for j in range(5)),
            i % 5,
        )
        for i in range(30)
    ]
    corpus = "\n".join(csqa.question_text(q.stem, c) for q in questions for c in q.choices)
    tokenizer = byte_bpe_tokenizer(corpus, 300)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            n_layer=2, n_embd=16, n_head=2, vocab_size=len(tokenizer), n_positions=48, bos_token_id=0, eos_token_id=0
        )
    ).eval()
    model.requires_grad_(False)
    layers = masking.find_maskable_layers(model, 1)
    gen = torch.Generator().manual_seed(1)
    logits = {layer.name: torch.randn(layer.mask_shape("weight"), generator=gen) - 1.0 for layer in layers}
    groups = {
        "removed_known": questions[20:22],
        "removed": questions[20:24],
        "kept": questions[24:27],
        "dev": questions[27:30],
        "dev_matched": [q for q in questions[27:30] if csqa.length_matched(q)],
    }
    return model, tokenizer, layers, logits, questions[:20], groups


def _settings(**over):  # fp32 features unless a test asks (they are compared with a plain forward to 1e-5)
    return base_params(
        {
            "csqa": {
                "dtype": "float32",
                "batch_size": 4,
                "eval_batch_size": 8,
                "bootstrap": 50,
                "max_length": 40,
                "log_every": 2,
                "checkpoint_every": 3,
                "epochs": {"head": 2, "lora": 1, "full": 1},
                "head_lr": 0.05,
                "lr": {"lora": 0.05, "full": 0.01},
                **over,
            }
        }
    ).csqa


def _tuner(setup, mode, settings=None, seeds=(0,), **kw):
    model, tokenizer, layers, logits, train, groups = setup
    return csqa.CSQAFinetuner(
        model,
        tokenizer,
        layers,
        logits,
        "weight",
        mode,
        train,
        groups,
        settings or _settings(),
        list(seeds),
        progress=False,
        **kw,
    )


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_removed_weights_stay_exactly_zero(tiny_setup, mode):
    model = tiny_setup[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuner = _tuner(tiny_setup, mode)
    removed = tuner.removed["remaining"]
    assert sum(int(m.sum()) for m in removed.values()) > 0
    variant = csqa.Variant(
        model,
        tuner.layer_names,
        tuner.transposed,
        removed,
        mode,
        tuner.settings,
        0,
        torch.device("cpu"),
        tuner.first_block,
    )
    assert [g["lr"] for g in variant.optimizer.param_groups] == [0.05, tuner.settings.lr[mode]]  # the head's own
    start = csqa.effective_weights(variant.model, tuner.layer_names, removed, mode)
    for step in range(4):
        index = tuner._step_index(step, 0)
        scores = variant.head(variant.features(tuner._batch("train", index)))
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


def test_bf16_head_features_are_the_fp32_ones_rounded(tiny_setup):
    fp32 = _tuner(tiny_setup, "head")._features({})
    bf16 = _tuner(tiny_setup, "head", settings=_settings(dtype="bfloat16"))._features({})
    for version, groups in fp32.items():
        assert not torch.equal(bf16[version]["kept"], groups["kept"])
        torch.testing.assert_close(bf16[version]["kept"], groups["kept"], rtol=0.05, atol=0.05)


def test_head_features_are_the_removed_models_features(tiny_setup, tmp_path):
    """Head mode's cached features of a version equal the final states of a copy of the model with
    that version's weights zeroed; a run killed while computing them resumes to the same features."""
    import copy

    from knowsubnet.downstream.csqa.model import gather_choices

    model = tiny_setup[0]
    tuner = _tuner(tiny_setup, "head", seeds=(0, 1))
    assert set(tuner.removed) == {"original", "remaining", "random:0", "random:1"}
    assert not torch.equal(
        tuner.removed["random:0"][tuner.layer_names[0]], tuner.removed["random:1"][tuner.layer_names[0]]
    )  # one random removal per seed
    features = tuner._features({})
    for version in ("original", "remaining", "random:1"):
        edited = copy.deepcopy(model)
        with torch.no_grad():
            for name, mask in tuner.removed[version].items():
                edited.get_submodule(name).weight.masked_fill_(mask, 0.0)
        inputs = csqa.packed_inputs(tuner.group_enc["kept"], range(3))
        with torch.no_grad():
            expected = gather_choices(
                edited.base_model(
                    input_ids=inputs["input_ids"],
                    position_ids=inputs["position_ids"],
                    attention_mask=inputs["attention_mask"],
                ).last_hidden_state,
                inputs["last"],
            )
        assert torch.allclose(features[version]["kept"], expected, atol=1e-5), version
    # removed_known's questions are part of removed's: computed once, copied
    assert torch.equal(features["remaining"]["removed_known"], features["remaining"]["removed"][:2])

    ckpt = tmp_path / "head.ckpt"
    killed = _tuner(tiny_setup, "head", seeds=(0, 1), checkpoint_path=ckpt)
    calls = []

    def stop_after_first_save(state):
        calls.append(len(state["done"]))
        killed._save({"done": {}, "features_partial": state})
        raise KeyboardInterrupt

    import knowsubnet.downstream.csqa.finetune as finetune_module

    real = finetune_module.head_features
    finetune_module.head_features = lambda *a, **kw: real(
        *a, **{**kw, "save": stop_after_first_save, "save_every_s": 0.0}
    )
    try:
        with pytest.raises(KeyboardInterrupt):
            killed.run()
    finally:
        finetune_module.head_features = real
    assert calls == [1] and ckpt.is_file()
    resumed = _tuner(tiny_setup, "head", seeds=(0, 1), checkpoint_path=ckpt)._features(
        finetune_module.checkpoint.load(ckpt, killed.fingerprint())
    )
    for version in features:
        for name in features[version]:
            assert torch.equal(resumed[version][name], features[version][name]), (version, name)


@pytest.fixture(scope="module")
def plain_lora(tiny_setup):
    """An uninterrupted lora run without a checkpoint: what a resumed or restarted run must equal."""
    return _tuner(tiny_setup, "lora").run()


def _assert_same_run(result, plain):
    def timeless(runs):
        return {key: {k: v for k, v in run.items() if k != "wall_time_s"} for key, run in runs.items()}

    assert timeless(result["runs"]) == timeless(plain["runs"])
    assert result["accuracy"] == plain["accuracy"]
    assert result["diff_of_diffs"] == plain["diff_of_diffs"]


def test_full_run_is_resumable_and_reproducible(tiny_setup, plain_lora, tmp_path):
    ckpt = tmp_path / "lora.ckpt"
    plain = plain_lora
    assert set(plain["runs"]) == {"0/original", "0/remaining", "0/random"}
    for v in ("remaining", "random"):
        assert plain["runs"][f"0/{v}"]["max_abs_removed_weight"] == 0.0
    group = plain["accuracy"]["remaining"]["removed"]
    assert group["n"] == 4 and group["ci95"][0] <= group["acc"] <= group["ci95"][1]
    assert plain["runs"]["0/original"]["curve"][-1]["step"] == plain["steps"] == 5
    assert set(plain["delta"]["remaining - original"]) == set(csqa.GROUPS)

    # interrupted at the first checkpoint of the second variant, then resumed
    tuner = _tuner(tiny_setup, "lora", checkpoint_path=ckpt)
    real_save = tuner._save

    def save_then_stop(state):
        real_save(state)
        if state.get("current") and state["current"]["run"] == "0/remaining":
            raise KeyboardInterrupt

    tuner._save = save_then_stop
    with pytest.raises(KeyboardInterrupt):
        tuner.run()
    assert ckpt.is_file()
    resumed = _tuner(tiny_setup, "lora", checkpoint_path=ckpt).run()
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
        # every run done with every answer right, but at another learning rate: resuming it would be wrong
        done = {
            key: {
                **run,
                "picks": {
                    g: "".join(str(int(x)) for x in _tuner(tiny_setup, "lora").group_enc[g].labels)
                    for g in run["picks"]
                },
            }
            for key, run in plain_lora["runs"].items()
        }
        other_lr = _settings(lr={"lora": 0.02, "full": 0.01})
        _tuner(tiny_setup, "lora", other_lr, checkpoint_path=ckpt)._save({"done": done})
        expected = "checkpoint was written for other inputs (changed: settings)"
    with caplog.at_level(logging.WARNING, logger="knowsubnet.core.checkpoint"):
        result = _tuner(tiny_setup, "lora", checkpoint_path=ckpt).run()
    warnings = [r.getMessage() for r in caplog.records if r.name == "knowsubnet.core.checkpoint"]
    assert len(warnings) == 1 and expected in warnings[0] and "starting from scratch" in warnings[0]
    _assert_same_run(result, plain_lora)


def test_head_mode_trains_a_head_per_seed(tiny_setup):
    result = _tuner(tiny_setup, "head", seeds=(0, 1)).run()
    assert set(result["runs"]) == {f"{s}/{v}" for s in (0, 1) for v in csqa.VARIANTS}
    assert result["runs"]["0/original"]["curve"] != result["runs"]["1/original"]["curve"]  # the seed matters
    assert all(len(v) == 2 for v in result["seed_accuracy"]["original"].values())
    assert result["runs"]["0/original"]["steps"] == result["steps"] == 10


# ---------------------------------------------------------------------------------------------
# statistics: paired intervals, the difference of differences, length bias


def test_paired_delta_of_a_version_with_itself_is_zero():
    values = np.array([1.0] * 30 + [0.0] * 70)
    same = csqa.paired_delta(values, values, 200, 0, 0)
    assert same["diff"] == 0.0 and same["ci95"] == [0.0, 0.0]


def _simulated(effect: float, n: int, seeds: int, rng: np.random.Generator) -> tuple[dict, dict]:
    """0/1 correctness of an original and a remaining model on a removed and a kept group: each
    question has its own difficulty and the two models' answers are correlated (the pairing), and
    the remaining model loses `effect` of accuracy on the removed group only."""
    out_a, out_b = {}, {}
    for group, drop in (("removed", effect), ("kept", 0.0)):
        p = rng.uniform(0.2, 0.9, size=n)
        u = rng.uniform(size=(seeds, n))
        out_b[group] = (u < p).astype(float)
        out_a[group] = (np.clip(u + rng.normal(0, 0.1, size=u.shape), 0, 1) < np.clip(p - drop, 0, 1)).astype(float)
    return out_a, out_b


def test_difference_of_differences_recovers_a_known_effect():
    rng = np.random.default_rng(0)
    effect_a, effect_b = _simulated(0.15, 400, 3, rng)
    dod = csqa.diff_of_diffs(effect_a, effect_b, "removed", "kept", 1000, 0, 0)
    assert dod["ci95"][0] < -0.15 < dod["ci95"][1] and dod["ci95"][1] < 0  # covers the truth, excludes 0
    assert dod["mde"] == pytest.approx(csqa.MDE_Z * dod["se"]) and dod["mde"] < 0.15
    # without an effect the interval covers zero
    null_a, null_b = _simulated(0.0, 400, 3, rng)
    null = csqa.diff_of_diffs(null_a, null_b, "removed", "kept", 1000, 0, 0)
    assert null["ci95"][0] < 0 < null["ci95"][1]
    # paired: resampling the two models' questions independently would give a much wider interval
    unpaired = []
    for group in ("removed", "kept"):
        a, b = effect_a[group].mean(axis=0), effect_b[group].mean(axis=0)
        boots = rng.integers(0, len(a), size=(1000, 2, len(a)))
        unpaired.append(a[boots[:, 0]].mean(1) - b[boots[:, 1]].mean(1))
    assert dod["se"] < 0.8 * float(np.std(unpaired[0] - unpaired[1]))
    # the seed variance is inside the interval: seeds that disagree widen it
    noisy_a = {g: v.copy() for g, v in effect_a.items()}
    noisy_a["removed"][0] = 1.0  # one finetuning seed got every removed question right
    wide = csqa.diff_of_diffs(noisy_a, effect_b, "removed", "kept", 1000, 0, 0)
    assert wide["se"] > 1.5 * dod["se"]


def test_a_length_biased_scorer_is_caught():
    rng = np.random.default_rng(0)
    questions = []
    for i in range(300):
        choices = [WORDS[(i + j) % 10] + (" of " + WORDS[j] if (i * 7 + j) % 3 == 0 else "") for j in range(5)]
        questions.append(csqa.Question(f"q{i}", "where?", tuple(choices), int(rng.integers(0, 5))))
    longest = np.array([int(np.argmax([len(c.split()) for c in q.choices])) for q in questions])
    oracle = np.array([q.label for q in questions])
    guess = rng.integers(0, 5, size=len(questions))
    assert csqa.length_bias(longest, questions)["biased"]
    assert not csqa.length_bias(oracle, questions)["biased"]
    assert not csqa.length_bias(guess, questions)["biased"]
    report = csqa.length_bias(longest, questions)
    assert report["acc_one_word"] < report["acc_multiword"]
    # the length-matched questions: a one-word answer and a multi-word distractor
    matched = [q for q in questions if csqa.length_matched(q)]
    assert matched and all(len(q.choices[q.label].split()) == 1 for q in matched)
    picks = np.array([int(np.argmax([len(c.split()) for c in q.choices])) for q in matched])
    assert float((picks == np.array([q.label for q in matched])).mean()) == 0.0  # below chance there


# ---------------------------------------------------------------------------------------------
# the report's CSQA section


def _csqa_record(model, target, seed, mode, accs):
    """A finetune_csqa-shaped result; accs[variant] = accuracy per group of csqa.GROUPS."""
    accuracy = {
        v: {g: {"acc": a, "ci95": [a - 0.1, a + 0.1], "n": 50} for g, a in zip(csqa.GROUPS, accs[v])}
        for v in csqa.VARIANTS
    }
    delta = {
        f"{a} - {b}": {
            g: {"diff": accs[a][i] - accs[b][i], "ci95": [-0.2, 0.1], "se": 0.07, "mde": 0.196, "n": 50}
            for i, g in enumerate(csqa.GROUPS)
        }
        for a, b in csqa.CONTRASTS
    }
    dod = {
        f"{a} - {b}": {
            f"{g} vs {r}": {
                "diff": (accs[a][csqa.GROUPS.index(g)] - accs[b][csqa.GROUPS.index(g)])
                - (accs[a][csqa.GROUPS.index(r)] - accs[b][csqa.GROUPS.index(r)]),
                "ci95": [-0.4, -0.1],
                "se": 0.07,
                "mde": 0.196,
                "n": 50,
                "n_reference": 50,
            }
            for g, r in csqa.DOD_PAIRS
        }
        for a, b in csqa.CONTRASTS[:2]
    }
    length = {
        v: {
            g: {
                "picked_multiword": 0.5,
                "answer_multiword": 0.4,
                "options_multiword": 0.45,
                "acc_one_word": 0.3,
                "n_one_word": 20,
                "acc_multiword": 0.4,
                "n_multiword": 30,
                "biased": False,
            }
            for g in csqa.GROUPS
        }
        for v in csqa.VARIANTS
    }
    return {
        "model": model,
        "target": target,
        "seed": seed,
        "mode": mode,
        "finetune_seeds": [0, 1, 2],
        "accuracy": accuracy,
        "delta": delta,
        "diff_of_diffs": dod,
        "length": length,
    }


def test_report_csqa_section(tmp_path):
    from conftest import write_report_inputs as write_inputs

    from knowsubnet.report import build as report
    from knowsubnet.report.csqa import load_csqa_results

    accs = {
        "original": (0.6, 0.6, 0.5, 0.4, 0.4),
        "remaining": (0.3, 0.4, 0.5, 0.35, 0.35),
        "random": (0.6, 0.6, 0.45, 0.4, 0.4),
    }
    paths = []
    for mode in ("head", "lora"):
        path = tmp_path / "csqa" / "m" / "csqa1" / "seed0" / f"{mode}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_csqa_record("m", "csqa1", 0, mode, accs)))
        paths.append(path)
    metrics_paths, mask_paths, log_paths = write_inputs(tmp_path)
    written = report.build_report(
        metrics_paths, out_dir=tmp_path, params=base_params({"report": {"dpi": 40}}), csqa_paths=paths
    )
    table = pd.read_csv(tmp_path / "tables" / "csqa.csv")
    assert len(table) == 2 * 3 * 5
    row = table[(table["mode"] == "lora") & (table["variant"] == "remaining") & (table["group"] == "removed_known")]
    assert float(row["acc"].iloc[0]) == 0.3 and float(row["diff_vs_original"].iloc[0]) == pytest.approx(-0.3)
    effect_md = (tmp_path / "tables" / "csqa_effect.md").read_text()
    assert "-30.0 pts [-40.0, -10.0]" in effect_md and "±19.6 pts" in effect_md  # removed known vs kept
    assert "| no |" in (tmp_path / "tables" / "csqa_length.md").read_text()
    assert written["fig_csqa"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (tmp_path / "report.md").read_text()
    assert "## CommonsenseQA after finetuning" in text and "figures/csqa.png" in text
    assert "difference of differences" in text
    assert "a cost on the removed questions, -30.0 pts [-40.0, -10.0]" in text and "±19.6 points or more" in text
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "m"}))
    with pytest.raises(InputError, match=r"bad\.json: missing key 'target'"):
        load_csqa_results([bad])


def test_the_effect_table_keeps_its_order_when_the_result_file_has_sorted_keys(tmp_path):
    """write_json sorts keys ("removed vs kept" before "removed_known vs ..."); the table still
    lists the contrasts and pairs in finetune's order."""
    from knowsubnet.core.io import write_json
    from knowsubnet.report.csqa import (
        CSQA_DOD_CONTRASTS,
        CSQA_DOD_PAIRS,
        CSQA_GROUP_LABELS,
        effect_markdown,
        load_csqa_results,
    )

    assert CSQA_DOD_CONTRASTS == tuple(f"{a} - {b}" for a, b in csqa.CONTRASTS[:2])
    assert CSQA_DOD_PAIRS == tuple(f"{g} vs {r}" for g, r in csqa.DOD_PAIRS)
    accs = {v: (0.6, 0.5, 0.4, 0.4, 0.4) for v in csqa.VARIANTS}
    write_json(tmp_path / "head.json", _csqa_record("m", "csqa1", 0, "head", accs))
    assert list(json.loads((tmp_path / "head.json").read_text())["diff_of_diffs"]["remaining - original"]) != list(
        CSQA_DOD_PAIRS
    )  # the file's own order differs
    table = effect_markdown(load_csqa_results([tmp_path / "head.json"]))
    labels = {g: f"{CSQA_GROUP_LABELS[g]} (n=50)" for g in csqa.GROUPS}
    assert list(zip(table["difference"], table["on"], table["minus on"])) == [
        (contrast, labels[g], labels[r]) for contrast in CSQA_DOD_CONTRASTS for g, r in csqa.DOD_PAIRS
    ]


# ---------------------------------------------------------------------------------------------
# the workflow: only CSQA-linked targets are finetuned, one job per mode


def test_snakemake_finetunes_only_csqa_targets():
    import subprocess
    import sys
    from pathlib import Path

    root = REPO_ROOT
    snakemake = Path(sys.executable).parent / "snakemake"
    proc = subprocess.run(
        [
            str(snakemake),
            "results/report.md",
            "-n",
            "--nolock",
            "--forceall",
            "--configfile",
            "config/presets/demo.yaml",
        ],
        cwd=root,
        capture_output=True,
        text=True,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-2000:]
    jobs = sorted(set(line.split("output: ")[1] for line in out.splitlines() if "output: results/csqa/" in line))
    assert jobs == [f"results/csqa/smollm2-135m/csqa1/seed0/{mode}.json" for mode in ("head", "lora")]


# ---------------------------------------------------------------------------------------------
# the stage end to end on a toy model directory, and its command line


def test_finetune_csqa_stage(csqa_files, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    table = csqa_files["triplets"]
    table.to_parquet(tmp_path / "triplets.parquet", index=False)
    splits = make_splits(
        table,
        "csqa1",
        {"csqa": "csqa1"},
        seed=0,
        fractions={"train": 0.8, "val": 0.1, "test": 0.1},
        targetkg_holdout=False,
        max_targetkg=None,
        max_controlkg=None,
        **split_choices(),
    )
    write_splits(tmp_path / "splits", {"csqa1": splits})
    facts = splits["targetkg_train"]
    pd.DataFrame(
        {
            "uuid": facts["uuid"],
            "head": facts["head"],
            "rel": facts["rel"],
            "tail": facts["tail"],
            "template_id": 0,
            "prompt": facts["head"] + " is near the",
            "tail_text": " " + facts["tail"],
            "tail_ppl": 5.0,
        }
    ).to_parquet(tmp_path / "verbalized.parquet", index=False)
    csqa_dir = tmp_path / "csqa"
    csqa_dir.mkdir()
    csqa_files["train"].rename(csqa_dir / "train_rand_split.jsonl")
    csqa_files["dev"].rename(csqa_dir / "dev_rand_split.jsonl")
    corpus = "\n".join(
        csqa.question_text(q.stem, c)
        for q in csqa.read_questions(csqa_dir / "train_rand_split.jsonl")
        for c in q.choices
    )
    corpus += "\n" + "\n".join(p + t for p, t in zip(facts["head"] + " is near the", " " + facts["tail"]))
    tokenizer = byte_bpe_tokenizer(corpus, 300)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            n_layer=2,
            n_embd=16,
            n_head=2,
            vocab_size=len(tokenizer),
            n_positions=48,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
    )
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    layers = masking.find_maskable_layers(model, 1)
    gen = torch.Generator().manual_seed(0)
    masking.save_mask(
        tmp_path / "mask.safetensors",
        {layer.name: torch.randn(layer.mask_shape("weight"), generator=gen) for layer in layers},
        {"granularity": "weight", "top_k_blocks": 1, "model": "toy", "target": "csqa1", "seed": 0},
    )
    params = base_params(
        {
            "targets": {"csqa1": {"csqa": "csqa1"}},
            "robustness": {"suppressed_ratio": 1.05},
            "csqa": {
                "modes": ["head"],
                "seeds": [0, 1],
                "train_questions": 12,
                "dev_questions": 6,
                "batch_size": 4,
                "epochs": {"head": 2},
                "max_length": 40,
                "bootstrap": 50,
                "device": "cpu",
            },
        }
    )
    out = tmp_path / "results" / "head.json"
    paths = {
        "model_dir": tmp_path / "model",
        "mask": tmp_path / "mask.safetensors",
        "triplets": tmp_path / "triplets.parquet",
        "splits_dir": tmp_path / "splits" / "csqa1",
        "verbalized": tmp_path / "verbalized.parquet",
        "csqa_dir": csqa_dir,
        "out": out,
    }
    returned = csqa.run_stage(params, model="toy", target="csqa1", seed=0, mode="head", **paths)
    result = json.loads(out.read_text())
    assert result["runs"] == returned["runs"] and result["finetune_seeds"] == [0, 1]
    assert result["groups"]["removed"]["question_ids"] == ["q0", "q1", "q2", "q3"]
    # removed_known: the questions of the facts the removal suppressed (all four facts count as known)
    assert result["facts"]["n"] == 4 and result["facts"]["known"] == 4
    assert result["groups"]["removed_known"]["n"] == result["facts"]["known_and_suppressed"] < 4
    assert set(result["groups"]["removed_known"]["question_ids"]) <= {"q0", "q1", "q2", "q3"}
    assert result["groups"]["kept"]["n"] == 4 and result["groups"]["dev"]["n"] == 6 and result["n_train"] == 12
    assert result["held_out_of_training"] == {"linked": 8, "siblings": 2}
    assert "code_version" in result["provenance"] and result["provenance"]["params"]["target"] == {"csqa": "csqa1"}
    assert not list(out.parent.glob(".*ckpt"))  # the checkpoint is gone once the result is written
    # written through CsqaResult: the bytes write_json gave the result dict, and read -> write keeps them
    from knowsubnet.core.io import canonical_json
    from knowsubnet.evaluation.csqa_result import CsqaResult

    assert out.read_text() == canonical_json(returned)
    typed = CsqaResult.read(out)
    typed.write(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == out.read_bytes()
    assert CsqaResult.read(tmp_path / "again.json") == typed
    assert typed.main_effect() == typed.diff_of_diffs["remaining - original"]["removed_known vs kept"]

    # a choice count other than five stops with the file and line
    lines = (csqa_dir / "dev_rand_split.jsonl").read_text().splitlines()
    row = json.loads(lines[2])
    row["question"]["choices"] = row["question"]["choices"][:3]
    lines[2] = json.dumps(row)
    (csqa_dir / "dev_rand_split.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"dev_rand_split\.jsonl:3: expected 5 choices"):
        csqa.run_stage(params, model="toy", target="csqa1", seed=0, mode="head", **paths)


def test_the_finetune_csqa_command_passes_its_arguments_to_run_stage(tmp_path, monkeypatch, capsys):
    """`knowsubnet finetune_csqa` (used by downstream.smk and dvc.yaml) maps its command line onto
    `run_stage`'s arguments; an InputError exits with code 2 and the message."""
    repo = REPO_ROOT
    calls = []
    monkeypatch.setattr(csqa, "run_stage", lambda params, **kw: calls.append((params, kw)))
    argv = [
        "--params",
        str(repo / "config" / "base.yaml"),
        "--model",
        "toy",
        "--target",
        "csqa1",
        "--seed",
        "3",
        "--mode",
        "head",
        "--model-dir",
        "m",
        "--mask",
        "k.safetensors",
        "--triplets",
        "t.parquet",
        "--splits",
        "s",
        "--verbalized",
        "v.parquet",
        "--csqa-dir",
        "c",
        "--out",
        str(tmp_path / "head.json"),
    ]
    assert run_stage("finetune_csqa", argv) == 0
    ((params, kw),) = calls
    assert params.csqa.modes  # the typed params of --params
    assert kw == {
        "model": "toy",
        "target": "csqa1",
        "seed": 3,
        "mode": "head",
        "model_dir": Path("m"),
        "mask": Path("k.safetensors"),
        "triplets": Path("t.parquet"),
        "splits_dir": Path("s"),
        "verbalized": Path("v.parquet"),
        "csqa_dir": Path("c"),
        "out": tmp_path / "head.json",
    }

    def bad_input(params, **kw):
        raise InputError("dev_rand_split.jsonl:3: expected 5 choices (labels A, B, C, D, E), got 3")

    monkeypatch.setattr(csqa, "run_stage", bad_input)
    assert run_stage("finetune_csqa", argv) == 2
    assert "dev_rand_split.jsonl:3: expected 5 choices" in capsys.readouterr().err
    bad_mode = argv[: argv.index("--mode") + 1] + ["prompt"] + argv[argv.index("--mode") + 2 :]
    assert run_stage("finetune_csqa", bad_mode) == 2  # argparse: --mode is one of csqa.MODES
