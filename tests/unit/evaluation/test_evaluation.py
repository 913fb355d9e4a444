"""Tail-token metrics against hand-computed values, and the ablation's variants and baseline."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import base_params
from torch import nn

from knowsubnet.core.errors import InputError
from knowsubnet.data.encoding import FactSet
from knowsubnet.evaluation import ablation
from knowsubnet.method import edits, masking
from knowsubnet.scoring import facts as scoring
from knowsubnet.scoring.text import lm_ppl

# Bigram toy LM: the logits for the next token given current token i are LOGITS[i].
LOGITS = torch.tensor(
    [
        [2.0, 0.0, 0.0, 0.0],  # after 0: token 0 is top-1
        [0.0, 0.0, 1.0, 0.0],  # after 1: token 2 is top-1
        [0.0, 3.0, 0.0, 0.0],  # after 2: token 1 is top-1; token 3 ties with 0 and 2 behind it (rank 2)
        [0.0, 1.0, 0.0, 0.0],  # after 3: token 0 has one token above it (rank 2)
    ]
)


class _OneHotBase(nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids, use_cache=None):
        return SimpleNamespace(last_hidden_state=nn.functional.one_hot(input_ids, self.vocab).float())


class BigramLM(nn.Module):
    """A fake causal LM whose output logits we control exactly: logits(t) = LOGITS[input_ids[t]]."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.base_model = _OneHotBase(table.shape[0])
        self.head = nn.Linear(table.shape[0], table.shape[0], bias=False)
        with torch.no_grad():
            self.head.weight.copy_(table.T)  # head(one_hot(i)) = W[:, i] = table[i]

    def get_output_embeddings(self):
        return self.head


def ce(row: torch.Tensor, gold: int) -> float:
    """Cross-entropy by hand: log sum exp(row) - row[gold]."""
    return math.log(sum(math.exp(float(v)) for v in row)) - float(row[gold])


def toy_facts() -> FactSet:
    # fact a: prompt [0, 1], tail [2, 3] -> inputs [0, 1, 2], tail predicted at positions 1 and 2
    # fact b: prompt [3],    tail [0, 0] -> inputs [3, 0], padded with 0
    input_ids = torch.tensor([[0, 1, 2], [3, 0, 0]])
    targets = torch.tensor([[-100, 2, 3], [0, 0, -100]])
    return FactSet(input_ids, targets, ["a", "b"])


def expected_toy():
    nll_a = (ce(LOGITS[1], 2) + ce(LOGITS[2], 3)) / 2
    nll_b = (ce(LOGITS[3], 0) + ce(LOGITS[0], 0)) / 2
    return nll_a, nll_b


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_score_facts_matches_hand_computation(batch_size):
    scores = scoring.score_facts(BigramLM(LOGITS), toy_facts(), batch_size, "cpu")
    nll_a, nll_b = expected_toy()
    assert scores["nll"].tolist() == pytest.approx([nll_a, nll_b], abs=1e-6)
    assert scores["rank"].tolist() == [1, 2]  # first tail token: 2 after 1 (top-1); 0 after 3 (second)
    assert scores["correct"].tolist() == [False, False]  # a: token 3 after 2 is not top-1


def test_summarize_facts():
    scores = scoring.score_facts(BigramLM(LOGITS), toy_facts(), 2, "cpu")
    summary = scoring.summarize_facts(scores)
    nll_a, nll_b = expected_toy()
    assert summary["ppl"] == pytest.approx(math.exp((nll_a + nll_b) / 2), rel=1e-6)
    assert summary["rank"] == 1.5 and summary["rank_median"] == 1.5
    assert summary["acc"] == 0.0 and summary["n"] == 2


def test_correct_needs_every_tail_token_top1():
    # prompt [1], tail [2, 1]: 2 is top-1 after 1, 1 is top-1 after 2 -> correct
    facts = FactSet(torch.tensor([[1, 2]]), torch.tensor([[2, 1]]), ["c"])
    scores = scoring.score_facts(BigramLM(LOGITS), facts, 4, "cpu")
    assert scores["correct"].tolist() == [True] and scores["rank"].tolist() == [1]


def test_token_ranks_ties_count_for_gold():
    logits = torch.tensor([[1.0, 1.0, 0.5], [0.0, 2.0, 1.0]])
    assert scoring.token_ranks(logits, torch.tensor([1, 0])).tolist() == [1, 3]


def test_lm_ppl_matches_hand_computation():
    blocks = torch.tensor([[0, 1, 2, 3], [3, 0, 0, 1]])
    expected = [
        ce(LOGITS[0], 1),
        ce(LOGITS[1], 2),
        ce(LOGITS[2], 3),
        ce(LOGITS[3], 0),
        ce(LOGITS[0], 0),
        ce(LOGITS[0], 1),
    ]
    for batch_size in (1, 2):
        ppl = lm_ppl(BigramLM(LOGITS), blocks, batch_size, "cpu")
        assert ppl == pytest.approx(math.exp(sum(expected) / len(expected)), rel=1e-6)


def test_fact_without_tail_is_an_input_error():
    facts = FactSet(torch.tensor([[1, 2]]), torch.tensor([[-100, -100]]), ["empty"])
    with pytest.raises(InputError, match="empty"):
        scoring.score_facts(BigramLM(LOGITS), facts, 4, "cpu")


# ---------------------------------------------------------------------------------------------
# the ablation on a tiny random GPT-2


@pytest.fixture(scope="module")
def tiny():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=16, n_head=4, vocab_size=30, n_positions=32, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 30, (6, 5), generator=gen)
    targets = torch.full_like(ids, -100)
    targets[:, 3:] = torch.randint(0, 30, (6, 2), generator=gen)
    facts = FactSet(ids, targets, [f"f{i}" for i in range(6)])
    control = FactSet(ids.flip(0), targets.flip(0), [f"c{i}" for i in range(6)])
    blocks = torch.randint(0, 30, (3, 8), generator=gen)
    layers = masking.find_maskable_layers(model, 2)
    logits = {layer.name: torch.randn(layer.mask_shape("weight"), generator=gen) for layer in layers}
    return model, layers, logits, facts, control, blocks


def _run(tiny, logits=None, seed=7, draws=2):
    model, layers, default_logits, facts, control, blocks = tiny
    return ablation.evaluate_ablation(
        model,
        layers,
        default_logits if logits is None else logits,
        "weight",
        facts,
        control,
        blocks,
        random_draws=draws,
        seed=seed,
        batch_size=4,
        device="cpu",
        model_name="tiny",
        target="T",
        controllm_ppl="token_mean",
    )


def test_ablation_shape_and_determinism(tiny):
    result = _run(tiny)
    for key in (
        "model",
        "target",
        "seed",
        "sparsity",
        "original",
        "removed",
        "random",
        "kept",
        "delta_ppl",
        "random_spread",
        "random_draws",
    ):
        assert key in result
    assert set(result["sparsity"]) >= {"masked_layers", "all_weights"}
    for variant in ("original", "removed", "random", "kept"):
        assert set(result[variant]) == {"targetkg", "controlkg", "controllm"}
        for s in ("targetkg", "controlkg"):
            assert {"ppl", "rank", "acc"} <= set(result[variant][s])
        assert "ppl" in result[variant]["controllm"]
    assert set(result["delta_ppl"]) == {"removed", "random", "kept"}
    for variant, sets in result["delta_ppl"].items():
        for s, value in sets.items():
            assert value == pytest.approx(result[variant][s]["ppl"] - result["original"][s]["ppl"])
    assert len(result["random_draws"]) == 2
    mean_ppl = sum(d["targetkg"]["ppl"] for d in result["random_draws"]) / 2
    assert result["random"]["targetkg"]["ppl"] == pytest.approx(mean_ppl)
    assert result["removed"]["targetkg"]["ppl"] != result["original"]["targetkg"]["ppl"]
    assert _run(tiny) == result  # bit-identical for a fixed seed
    assert _run(tiny, seed=8)["random"] != result["random"]


def test_ablation_restores_weights(tiny):
    model = tiny[0]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    _run(tiny)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name


def test_removed_equals_scoring_with_weights_zeroed(tiny):
    model, layers, logits, facts, control, blocks = tiny
    result = _run(tiny)
    saved = {layer.name: layer.weight.detach().clone() for layer in layers}
    try:
        with torch.no_grad():
            for layer in layers:
                layer.weight[logits[layer.name] > 0] = 0.0
        ppl = scoring.summarize_facts(scoring.score_facts(model, facts, 4, "cpu"))["ppl"]
    finally:
        with torch.no_grad():
            for layer in layers:
                layer.weight.copy_(saved[layer.name])
    assert result["removed"]["targetkg"]["ppl"] == pytest.approx(ppl, rel=1e-9)


def test_random_baseline_has_the_masks_per_matrix_counts(tiny, monkeypatch):
    seen = []
    original = edits.applied

    def spy(layers, edit, keep="remaining"):
        seen.append((keep, {name: int(m.sum()) for name, m in edit.tensors.items()}))
        return original(layers, edit, keep=keep)

    monkeypatch.setattr(edits, "applied", spy)
    _run(tiny, draws=3)
    expected = {name: int((v > 0).sum()) for name, v in tiny[2].items()}
    assert [keep for keep, _ in seen] == ["remaining", "subnetwork", "remaining", "remaining", "remaining"]
    for _, counts in seen:
        assert counts == expected


def test_empty_and_full_subnetworks(tiny):
    logits = tiny[2]
    empty = _run(tiny, logits={n: torch.full_like(v, -1.0) for n, v in logits.items()})
    for s in ("targetkg", "controlkg", "controllm"):
        assert empty["delta_ppl"]["removed"][s] == 0.0 and empty["delta_ppl"]["random"][s] == 0.0
    assert empty["sparsity"]["masked_layers"] == 1.0
    full = _run(tiny, logits={n: torch.ones_like(v) for n, v in logits.items()})
    for s in ("targetkg", "controlkg", "controllm"):
        assert full["delta_ppl"]["kept"][s] == 0.0  # keeping everything is the original model
    assert full["sparsity"]["masked_layers"] == 0.0


def test_random_draws_must_be_positive(tiny):
    with pytest.raises(InputError, match="eval.random_draws"):
        _run(tiny, draws=0)


def test_eval_section_defaults_and_errors():
    settings = base_params({"eval": {"random_draws": 5}}).eval
    assert settings.random_draws == 5 and settings.batch_size == 32 and settings.device == "auto"
    with pytest.raises(InputError, match="eval.batch_size"):
        base_params({"eval": {"batch_size": 0}})
    with pytest.raises(InputError, match="eval.dtype"):
        base_params({"eval": {"dtype": "int8"}})
    with pytest.raises(InputError, match="eval.controllm_ppl"):
        base_params({"eval": {"controllm_ppl": "median"}})


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_tail_logits_equal_the_full_forward(arch):
    # Only tail positions go through the LM head; they must equal the model's own logits there.
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if arch == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(n_layer=2, n_embd=16, n_head=4, vocab_size=30, n_positions=32, bos_token_id=0, eos_token_id=0)
        )
    else:
        model = LlamaForCausalLM(
            LlamaConfig(
                num_hidden_layers=2,
                hidden_size=16,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=24,
                vocab_size=30,
                bos_token_id=0,
                eos_token_id=0,
                pad_token_id=0,
            )
        )
    model.eval()
    ids = torch.randint(1, 30, (3, 6), generator=torch.Generator().manual_seed(2))
    targets = torch.full_like(ids, -100)
    targets[0, 2:4] = torch.tensor([5, 6])
    targets[1, 1] = 7
    targets[2, 3:5] = torch.tensor([8, 9])
    with torch.no_grad():
        logits, rows, gold = scoring.tail_logits(model, ids, targets)
        full = model(input_ids=ids).logits
    where = targets != -100
    assert rows.tolist() == [0, 0, 1, 2, 2] and gold.tolist() == [5, 6, 7, 8, 9]
    torch.testing.assert_close(logits, full[where].float(), rtol=1e-5, atol=1e-5)


def test_lm_ppl_batch_mean_is_the_mean_of_batch_perplexities():
    blocks = torch.tensor([[0, 1, 2, 3], [3, 0, 0, 1]])
    first = [ce(LOGITS[0], 1), ce(LOGITS[1], 2), ce(LOGITS[2], 3)]
    second = [ce(LOGITS[3], 0), ce(LOGITS[0], 0), ce(LOGITS[0], 1)]
    paper = lm_ppl(BigramLM(LOGITS), blocks, 1, "cpu", averaging="batch_mean")
    assert paper == pytest.approx((math.exp(sum(first) / 3) + math.exp(sum(second) / 3)) / 2, rel=1e-6)
    token = lm_ppl(BigramLM(LOGITS), blocks, 1, "cpu")
    assert token == pytest.approx(math.exp(sum(first + second) / 6), rel=1e-6)
    assert paper != pytest.approx(token)  # the two definitions differ (Jensen)
    with pytest.raises(InputError, match="eval.controllm_ppl"):
        lm_ppl(BigramLM(LOGITS), blocks, 1, "cpu", averaging="median")
