"""The logit lens and the multiple-choice probe (evaluation.readouts) on a toy GPT-2 / Llama: the
last block's lens is the ordinary score, both readouts find a signal planted in the hidden states
and see nothing where there is none, and an empty mask changes no readout."""

from __future__ import annotations

import copy
import random

import pandas as pd
import pytest
import torch
from conftest import CORPUS

from knowsubnet.data.encoding import IGNORE, encode_facts
from knowsubnet.evaluation import readouts
from knowsubnet.method import edits, masking
from knowsubnet.scoring.cached import CachedFacts
from knowsubnet.scoring.facts import score_facts

pytestmark = pytest.mark.usefixtures("one_thread")

TOP_K = 2  # masked blocks of the 3: the lens has two blocks to read
EMBED_SCALE = 25.0  # random-init embeddings (std 0.02) give every token nearly the same logit; a planted
# token must be able to win after the final norm, so the toy model's (tied) embeddings are scaled up
PLANT = 100.0  # times an embedding row: dominates whatever the masked blocks add to the residual


def build(arch: str, vocab: int):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if arch == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(
                n_layer=3,
                n_embd=32,
                n_head=2,
                vocab_size=vocab,
                n_positions=64,
                bos_token_id=0,
                eos_token_id=0,
                pad_token_id=0,
            )
        )
    else:
        model = LlamaForCausalLM(
            LlamaConfig(
                num_hidden_layers=3,
                hidden_size=32,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=48,
                vocab_size=vocab,
                bos_token_id=0,
                eos_token_id=0,
                pad_token_id=0,
            )
        )
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(EMBED_SCALE)
    return model.eval().requires_grad_(False)


def toy_facts(n: int, k: int, seed: int = 0):
    """n facts "A <word> is near the <word>" over the corpus's words, each with k candidate tails
    (the true one at a random place)."""
    words = sorted({w.strip(".").lower() for w in CORPUS.split()} - {""})
    draw = random.Random(seed)
    prompts, candidates, true_index = [], [], []
    for _ in range(n):
        head, *tails = draw.sample(words, k + 1)
        prompts.append(f"A {head} is near the")
        candidates.append([f" {t}" for t in tails])
        true_index.append(draw.randrange(k))
    return prompts, candidates, torch.tensor(true_index)


@pytest.fixture(scope="module")
def toy(gpt2_style):
    model = build("gpt2", len(gpt2_style))
    prompts, candidates, true_index = toy_facts(120, 5)
    tails = [c[i] for c, i in zip(candidates, true_index.tolist())]
    factset = encode_facts(gpt2_style, prompts, tails, scored_positions="all_tail_tokens")
    layers = masking.find_maskable_layers(model, TOP_K)
    cached = CachedFacts(model, layers, factset, "cpu")
    return {
        "model": model,
        "layers": layers,
        "cached": cached,
        "prompts": prompts,
        "candidates": candidates,
        "true_index": true_index,
        "tokenizer": gpt2_style,
    }


def planted(cached: CachedFacts, vectors: torch.Tensor, positions: torch.Tensor) -> CachedFacts:
    """`cached` with PLANT * vectors[i, t] added to the hidden state entering the first masked block
    wherever positions[i, t] (so the first masked block's output carries it too)."""
    out = copy.copy(cached)
    out.hidden = cached.hidden + PLANT * vectors * positions.unsqueeze(-1)
    return out


# ---------------------------------------------------------------------------------------------
# logit lens


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_last_blocks_lens_is_the_ordinary_tail_score(gpt2_style, arch):
    model = build(arch, len(gpt2_style))
    prompts, candidates, true_index = toy_facts(20, 3)
    factset = encode_facts(
        gpt2_style, prompts, [c[i] for c, i in zip(candidates, true_index.tolist())], scored_positions="all_tail_tokens"
    )
    cached = CachedFacts(model, masking.find_maskable_layers(model, TOP_K), factset, "cpu")
    lens = readouts.logit_lens(cached, batch=7)  # batches of mixed lengths
    assert sorted(lens) == [1, 2] and all(v.dtype == torch.float64 and v.shape == (20,) for v in lens.values())
    full = score_facts(model, factset, 8, progress=False)["nll"]
    torch.testing.assert_close(lens[2], full, atol=1e-4, rtol=0)
    torch.testing.assert_close(lens[2], cached.nll(), atol=1e-4, rtol=0)
    assert not torch.equal(lens[1], lens[2])  # block 1's lens is its own reading


def test_the_lens_reads_a_token_planted_after_the_first_masked_block(toy):
    cached = toy["cached"]
    head = toy["model"].get_output_embeddings().weight
    tail = cached.targets != IGNORE
    # at every tail position, the LM-head row of the token that position must predict
    vectors = torch.zeros_like(cached.hidden)
    vectors[tail] = head[cached.targets[tail]]
    before = readouts.logit_lens(cached)
    after = readouts.logit_lens(planted(cached, vectors, tail))
    assert float(before[1].mean()) > 3.0  # the untrained model does not know the tails
    assert float(after[1].mean()) < 0.1 * float(before[1].mean())
    assert (after[1] < 0.5).all()  # every fact: its planted tail is read with near certainty


# ---------------------------------------------------------------------------------------------
# multiple-choice probe


def synthetic(n: int, k: int, d: int, plant: bool, seed: int):
    generator = torch.Generator().manual_seed(seed)
    candidates = torch.randn(n, k, d, generator=generator)
    true_index = torch.randint(k, (n,), generator=generator)
    noise = torch.randn(n, d, generator=generator)
    features = candidates[torch.arange(n), true_index] + 0.5 * noise if plant else noise
    return features, candidates, true_index


@pytest.mark.parametrize("form", readouts.PROBE_FORMS)
def test_the_probe_finds_a_planted_tail_and_nothing_in_noise(form):
    k = 10
    for plant, check in ((True, lambda acc: acc > 0.95), (False, lambda acc: acc < 2.5 / k)):
        features, candidates, true_index = synthetic(600, k, 32, plant, seed=1)
        train, test = slice(0, 300), slice(300, None)
        probe = readouts.fit_choice_probe(features[train], candidates[train], true_index[train], form=form)
        correct = probe.accuracy(features[test], candidates[test], true_index[test])
        assert correct.shape == (300,) and set(correct.tolist()) <= {0.0, 1.0}
        assert check(float(correct.mean())), (plant, float(correct.mean()))
    again = readouts.fit_choice_probe(features[train], candidates[train], true_index[train], form=form)
    assert torch.equal(again.a, probe.a) and torch.equal(again.b, probe.b)  # nothing random in a fit


def test_the_probe_skips_padding_and_never_counts_a_tie():
    features, candidates, true_index = synthetic(40, 4, 8, plant=True, seed=2)
    valid = torch.ones(40, 4, dtype=torch.bool)
    valid[::2, 3] = False
    true_index = true_index.clamp(max=2)
    probe = readouts.fit_choice_probe(features, candidates, true_index, valid)
    assert torch.isinf(probe.scores(features, candidates, valid)[::2, 3]).all()
    zero = readouts.ChoiceProbe(
        "diagonal", torch.zeros(8, dtype=torch.float64), torch.zeros(8, dtype=torch.float64), 1.0, 1.0, 0.0, 0.0
    )
    assert zero.accuracy(features, candidates, torch.zeros(40, dtype=torch.long)).sum() == 0  # all tied


def test_the_probe_reads_a_tail_planted_in_the_tiny_models_hidden_states(toy):
    cached, model = toy["cached"], toy["model"]
    candidates, valid = readouts.candidate_embeddings(model, toy["tokenizer"], toy["prompts"], toy["candidates"])
    assert candidates.shape[:2] == (120, 5) and valid.all()
    true_index = toy["true_index"]
    true = candidates[torch.arange(120), true_index]
    everywhere = torch.ones(cached.hidden.shape[:2], dtype=torch.bool)
    train, test = slice(0, 60), slice(60, None)
    accuracy = {}
    for name, facts in (("plain", cached), ("planted", planted(cached, true.unsqueeze(1), everywhere))):
        features = readouts.choice_features(facts, batch=16)
        probe = readouts.fit_choice_probe(features[train], candidates[train], true_index[train])
        accuracy[name] = float(probe.accuracy(features[test], candidates[test], true_index[test]).mean())
    assert accuracy["planted"] > 0.9 and accuracy["plain"] < 0.45, accuracy  # chance: 1 in 5


def test_choice_features_are_the_final_hidden_state_where_the_first_tail_token_is_predicted(toy):
    cached = toy["cached"]
    features = readouts.choice_features(cached, batch=16)
    final = cached.top.forward(cached.hidden[:3])
    first = (cached.targets[:3] != IGNORE).int().argmax(dim=1)
    torch.testing.assert_close(features[:3], final[torch.arange(3), first], atol=1e-6, rtol=0)


def test_choice_sets_read_a_choices_frame():
    frame = pd.DataFrame(
        {
            "uuid": ["b", "b", "b", "a", "a"],
            "prompt": ["P b"] * 3 + ["P a"] * 2,
            "tail_text": [" x", " y", " z", " u", " v"],
            "is_true": [False, True, False, True, False],
        }
    )
    uuids, prompts, candidates, true_index = readouts.choice_sets(frame)
    assert uuids == ["b", "a"] and prompts == ["P b", "P a"]
    assert candidates == [[" x", " y", " z"], [" u", " v"]] and true_index.tolist() == [1, 0]


# ---------------------------------------------------------------------------------------------
# an empty mask removes nothing


def test_an_empty_mask_changes_no_readout(toy):
    cached, layers = toy["cached"], toy["layers"]
    candidates, _ = readouts.candidate_embeddings(toy["model"], toy["tokenizer"], toy["prompts"], toy["candidates"])
    true_index = toy["true_index"]

    def read():
        features = readouts.choice_features(cached)
        probe = readouts.fit_choice_probe(features[:60], candidates[:60], true_index[:60])
        return readouts.logit_lens(cached), features, probe.accuracy(features[60:], candidates[60:], true_index[60:])

    lens, features, correct = read()
    empty = edits.mask_edit({layer.name: torch.zeros(layer.weight.shape, dtype=torch.bool) for layer in layers})
    with edits.applied(layers, empty):
        lens_empty, features_empty, correct_empty = read()
    assert all(torch.equal(lens[b], lens_empty[b]) for b in lens)
    assert torch.equal(features, features_empty) and torch.equal(correct, correct_empty)
    half = edits.mask_edit(
        {
            layer.name: torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(0)) < 0.5
            for layer in layers
        }
    )
    with edits.applied(layers, half):
        assert not torch.equal(readouts.logit_lens(cached)[1], lens[1])  # a real removal is seen
