"""tiny: the tiny GPT-2 memorises its facts, bit-identically per seed, and prepares a loadable directory."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from knowsubnet.core.errors import InputError
from knowsubnet.models import prepare as models
from knowsubnet.models import tiny
from knowsubnet.scoring.templates import best_templates

FACTS = [
    ("banana", "IsA", "fruit"),
    ("apple", "IsA", "fruit"),
    ("dog", "IsA", "animal"),
    ("guitar", "IsA", "instrument"),
    ("orange", "IsA", "fruit"),
    ("orange", "IsA", "color"),  # one-to-many: strict accuracy cannot be 1
    ("oak", "IsA", "tree"),
    ("salmon", "IsA", "fish"),
    ("hammer", "IsA", "tool"),
    ("rose", "IsA", "flower"),
    ("knife", "UsedFor", "cutting"),
    ("pen", "UsedFor", "writing"),
    ("bed", "UsedFor", "sleeping"),
    ("car", "UsedFor", "driving"),
    ("oven", "UsedFor", "baking"),
    ("ball", "UsedFor", "playing"),
    ("fire", "HasProperty", "hot"),
    ("ice", "HasProperty", "cold"),
    ("sugar", "HasProperty", "sweet"),
    ("lemon", "HasProperty", "sour"),
    ("feather", "HasProperty", "light"),
    ("rock", "HasProperty", "hard"),
    ("fish", "AtLocation", "ocean"),
    ("book", "AtLocation", "library"),
    ("cow", "AtLocation", "farm"),
    ("bird", "CapableOf", "fly"),
    ("cat", "CapableOf", "climb"),
    ("rain", "Causes", "flooding"),
]
TEXT = (
    "The weather was mild in the valley that year , and the river ran high after the spring rains .\n"
    " = History = \n The town was founded on the north bank of the river by farmers and traders .\n"
) * 40
SPEC = {
    "source": "tiny",
    "vocab_size": 400,
    "n_layer": 2,
    "n_embd": 64,
    "n_head": 2,
    "n_positions": 64,
    "text_chars": 4000,
    "text_block": 32,
    "batch_facts": 64,
    "batch_text": 4,
    "lr": 5e-3,
    "warmup_steps": 10,
    "max_steps": 600,
    "eval_every": 25,
    "target_accuracy": 0.95,
}


@pytest.fixture(scope="module")
def facts():
    return pd.DataFrame(
        [(f"f{i:02d}", h, r, t) for i, (h, r, t) in enumerate(FACTS)], columns=["uuid", "head", "rel", "tail"]
    )


@pytest.fixture(scope="module")
def trained(facts):
    return tiny.train(facts, TEXT, SPEC, seed=0, progress=False)


def test_reaches_target_accuracy(trained, facts):
    model, tokenizer, stats = trained
    assert stats["reached_target"] and stats["steps"] < SPEC["max_steps"]
    assert stats["tail_accuracy_filtered"] >= SPEC["target_accuracy"]
    assert stats["facts"] == len(facts) and stats["sentences"] > 4 * len(facts)  # every template of each fact
    assert stats["tail_accuracy_ceiling"] < 1.0  # orange -> fruit / color share their prompts
    assert stats["tail_accuracy"] <= stats["tail_accuracy_filtered"]
    assert stats["tail_accuracy_best"] >= 0.9 and stats["history"][-1]["step"] == stats["steps"]
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert tokenizer.eos_token == "<|endoftext|>" and len(tokenizer) <= SPEC["vocab_size"]


def test_bit_identical_per_seed(trained, facts):
    model, tokenizer, stats = trained
    again, tokenizer2, stats2 = tiny.train(facts, TEXT, SPEC, seed=0, progress=False)
    assert tokenizer.get_vocab() == tokenizer2.get_vocab()
    assert stats["steps"] == stats2["steps"]
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    other, _, _ = tiny.train(facts, TEXT, dict(SPEC, max_steps=5), seed=1, progress=False)
    first, _, _ = tiny.train(facts, TEXT, dict(SPEC, max_steps=5), seed=0, progress=False)
    assert not torch.equal(other.transformer.wte.weight, first.transformer.wte.weight)


def test_prepare_tiny_model_directory(facts, tmp_path):
    spec = dict(SPEC, max_steps=50)
    prov = models.prepare_model("tiny-gpt2", spec, tmp_path / "tiny-gpt2", facts=facts, text=TEXT, seed=0)
    on_disk = json.loads((tmp_path / "tiny-gpt2" / "provenance.json").read_text())
    assert on_disk["model"] == "tiny-gpt2" and on_disk["source"] == "tiny" and "code_version" in on_disk
    assert on_disk["parameters"] == prov["parameters"] > 0
    assert 0.0 <= on_disk["tail_accuracy"] <= 1.0 and "tail_accuracy_best" in on_disk
    model, tokenizer = models.load_model(tmp_path / "tiny-gpt2")
    assert type(model).__name__ == "GPT2LMHeadModel" and models.context_length(model) == SPEC["n_positions"]
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    out = best_templates(model, tokenizer, facts, batch_size=16, device="cpu", scored_positions="all_tail_tokens")
    assert len(out) == len(facts) and (out["tail_ppl"] > 0).all()


def test_bad_spec_and_no_facts(facts):
    with pytest.raises(InputError, match="n_embd 65 must be a multiple of n_head 2"):
        tiny.train(facts, TEXT, dict(SPEC, n_embd=65), progress=False)
    with pytest.raises(InputError, match="'max_steps'"):
        tiny.train(facts, TEXT, dict(SPEC, max_steps=0), progress=False)
    with pytest.raises(InputError, match="no facts to train on"):
        tiny.train(facts.iloc[:0], TEXT, SPEC, progress=False)
