"""verbalize: tail NLL against a full-logits reference, best-template choice where the winner is known."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import byte_bpe_tokenizer
from torch import nn

from knowsubnet.core.errors import InputError
from knowsubnet.data import relations
from knowsubnet.data.encoding import encode_facts
from knowsubnet.scoring.facts import score_facts
from knowsubnet.scoring.templates import OUTPUT_COLUMNS, best_templates

CORPUS = (
    "A banana is a fruit. An apple is a fruit. A dog is an animal. Cats like to sleep in the sun.\n"
    "A guitar belongs to music. Water is made of hydrogen and oxygen. A knife is used for cutting.\n"
) * 30


@pytest.fixture(scope="module")
def tokenizer():
    return byte_bpe_tokenizer(CORPUS, 300)


class BigramLM(nn.Module):
    """p(next | previous token) = softmax(table[previous]); exposes the HF pieces score_facts uses."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        vocab = table.shape[0]
        self.head = nn.Linear(vocab, vocab, bias=False)
        self.head.weight.data = table.T.contiguous()
        self.register_buffer("eye", torch.eye(vocab))

    @property
    def base_model(self):
        return lambda input_ids, **_: SimpleNamespace(last_hidden_state=self.eye[input_ids])

    def get_output_embeddings(self):
        return self.head


def _id(tok, text):
    ids = tok(text, add_special_tokens=False).input_ids
    assert len(ids) == 1, (text, ids)
    return ids[0]


def test_best_template_is_the_predictable_winner(tokenizer):
    tok = tokenizer
    vocab = len(tok)
    table = torch.zeros(vocab, vocab)
    table[_id(tok, " to"), _id(tok, " fruit")] = 6.0  # "... belongs to" -> " fruit" is likely
    table[_id(tok, " a"), _id(tok, " fruit")] = 2.0  # "... is a" -> " fruit" less so
    model = BigramLM(table)

    def verbalizer(rel, head, tail):
        return [
            (0, f"{head.capitalize()} is a", f" {tail}"),
            (1, f"{head.capitalize()} belongs to", f" {tail}"),
            (2, f"A {head} is a", f" {tail}"),
        ]  # same last token as template 0: an exact tie

    facts = pd.DataFrame(
        {"uuid": ["u1", "u2"], "head": ["banana", "apple"], "rel": ["IsA", "IsA"], "tail": ["fruit", "dog"]}
    )
    out = best_templates(
        model, tok, facts, batch_size=2, device="cpu", verbalizer=verbalizer, scored_positions="all_tail_tokens"
    )
    assert list(out.columns) == OUTPUT_COLUMNS and out["uuid"].tolist() == ["u1", "u2"]
    assert out.loc[0, "template_id"] == 1 and out.loc[0, "prompt"] == "Banana belongs to"
    logp = F.log_softmax(table[_id(tok, " to")], dim=-1)[_id(tok, " fruit")]
    assert out.loc[0, "tail_ppl"] == pytest.approx(math.exp(-logp.item()), rel=1e-5)
    # " dog" after " a" or " to": all templates equal -> ties go to the lowest template_id.
    assert out.loc[1, "template_id"] == 0 and out.loc[1, "tail_text"] == " dog"

    def reversed_ids(rel, head, tail):
        return [(5, f"A {head} is a", f" {tail}"), (3, f"{head.capitalize()} is a", f" {tail}")]

    out = best_templates(
        model,
        tok,
        facts.iloc[:1],
        batch_size=1,
        device="cpu",
        verbalizer=reversed_ids,
        scored_positions="all_tail_tokens",
    )
    assert out.loc[0, "template_id"] == 3


def _tiny_gpt2(vocab):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    return GPT2LMHeadModel(config).eval()


def test_score_facts_matches_full_logits(tokenizer):
    model = _tiny_gpt2(len(tokenizer))
    prompts = ["A banana is a", "Cats like to sleep in the", "A dog is an", "Water is made of hydrogen and"]
    tails = [" fruit", " sun", " xylophonist", " oxygen"]
    fs = encode_facts(tokenizer, prompts, tails, [f"u{i}" for i in range(4)], scored_positions="all_tail_tokens")
    scores = score_facts(model, fs, batch_size=3)
    with torch.no_grad():
        logits = model(input_ids=fs.input_ids).logits
    ce = F.cross_entropy(logits.transpose(1, 2), fs.targets, reduction="none", ignore_index=-100)
    ref = ce.sum(1) / (fs.targets != -100).sum(1)
    assert scores["nll"].dtype == torch.float64 and scores["nll"].shape == (4,)
    assert torch.allclose(scores["nll"], ref.double(), atol=1e-5)
    assert torch.allclose(score_facts(model, fs, batch_size=1)["nll"], ref.double(), atol=1e-5)
    sel = fs.targets != -100
    top1 = (logits.argmax(-1) == fs.targets) | ~sel
    assert torch.equal(scores["correct"], top1.all(dim=1))
    assert not any(p.grad is not None for p in model.parameters())


def test_default_templates_from_relations(tokenizer):
    model = _tiny_gpt2(len(tokenizer))
    facts = pd.DataFrame(
        {
            "uuid": ["a", "b"],
            "head": ["banana", "knife"],
            "rel": ["IsA", "UsedFor"],
            "tail": ["fruit", "cutting"],
            "source": ["x", "y"],
        }
    )
    out = best_templates(model, tokenizer, facts, batch_size=4, device="cpu", scored_positions="all_tail_tokens")
    assert list(out.columns) == OUTPUT_COLUMNS and out["uuid"].tolist() == ["a", "b"]
    for row in out.itertuples():
        assert 0 <= row.template_id < len(relations.TEMPLATES[row.rel])
        assert (row.prompt, row.tail_text) == relations.verbalize(row.rel, row.template_id, row.head, row.tail)
        assert row.tail_ppl > 1.0


def test_bad_input(tokenizer):
    model = _tiny_gpt2(len(tokenizer))
    with pytest.raises(InputError, match="missing columns"):
        best_templates(
            model, tokenizer, pd.DataFrame({"uuid": ["a"], "head": ["x"]}), 2, scored_positions="all_tail_tokens"
        )
    dup = pd.DataFrame({"uuid": ["a", "a"], "head": ["x", "y"], "rel": ["IsA", "IsA"], "tail": ["z", "z"]})
    with pytest.raises(InputError, match="uuid a appears more than once"):
        best_templates(model, tokenizer, dup, 2, scored_positions="all_tail_tokens")
    bad = pd.DataFrame({"uuid": ["q"], "head": ["x"], "rel": ["IsTheOppositeOf"], "tail": ["z"]})
    with pytest.raises(InputError, match=r"fact q .*unknown relation"):
        best_templates(model, tokenizer, bad, 2, scored_positions="all_tail_tokens")
