"""Seed combinations, Jaccard overlap and subnetwork structure on small masks checked by hand."""

from __future__ import annotations

import pytest
import torch

from knowsubnet.core.errors import InputError
from knowsubnet.method import combination, masking
from knowsubnet.report import analysis


def m(*rows):
    return torch.tensor(rows, dtype=torch.bool)


A = {"h.0.mlp.fc": m(1, 1, 0, 0), "h.0.attn.proj": m(1, 0)}
B = {"h.0.mlp.fc": m(1, 0, 1, 0), "h.0.attn.proj": m(1, 1)}
C = {"h.0.mlp.fc": m(0, 1, 1, 0), "h.0.attn.proj": m(0, 0)}


def as_lists(masks):
    return {name: value.int().tolist() for name, value in masks.items()}


def test_union_intersection_majority():
    assert as_lists(combination.union([A, B, C])) == {"h.0.attn.proj": [1, 1], "h.0.mlp.fc": [1, 1, 1, 0]}
    assert as_lists(combination.intersection([A, B, C])) == {"h.0.attn.proj": [0, 0], "h.0.mlp.fc": [0, 0, 0, 0]}
    # two of three
    assert as_lists(combination.majority([A, B, C])) == {"h.0.attn.proj": [1, 0], "h.0.mlp.fc": [1, 1, 1, 0]}
    assert as_lists(combination.at_least([A, B, C], 2)) == as_lists(combination.majority([A, B, C]))
    # majority of an even number is a strict majority: 2 of 2
    assert as_lists(combination.majority([A, B])) == as_lists(combination.intersection([A, B]))
    assert as_lists(combination.combine([A, B, C], "union")) == as_lists(combination.union([A, B, C]))
    with pytest.raises(InputError):
        combination.combine([A], "sometimes")
    with pytest.raises(ValueError):
        combination.at_least([A, B], 3)


def test_logits_are_binarised():
    logits = {"h.0.mlp.fc": torch.tensor([0.5, -0.5, 0.0, 2.0])}
    assert as_lists(combination.union([logits])) == {"h.0.mlp.fc": [1, 0, 0, 1]}


def test_jaccard_over_all_layers_jointly():
    # A ∩ B: fc [1,0,0,0] + proj [1,0] = 2; A ∪ B: fc [1,1,1,0] + proj [1,1] = 5
    assert analysis.jaccard(A, B) == pytest.approx(0.4)
    assert analysis.jaccard(A, A) == 1.0
    # A ∩ C: fc [0,1,0,0] = 1; A ∪ C: fc [1,1,1,0] + proj [1,0] = 4
    assert analysis.jaccard(A, C) == pytest.approx(0.25)
    # packed masks give the same numbers (odd sizes exercise the padding bits)
    assert analysis.jaccard(analysis.pack(A), analysis.pack(B)) == pytest.approx(0.4)
    assert analysis.jaccard(analysis.pack(A), C) == pytest.approx(0.25)
    empty = {name: torch.zeros_like(v) for name, v in A.items()}
    assert analysis.jaccard(empty, empty) == 1.0
    with pytest.raises(InputError):
        analysis.jaccard(A, {"h.0.mlp.fc": m(1, 0, 0, 0)})


def test_jaccard_matrices():
    matrix = analysis.seed_overlap({0: A, 1: B, 2: C})
    assert list(matrix.index) == ["seed0", "seed1", "seed2"]
    assert matrix.loc["seed0", "seed1"] == pytest.approx(0.4) == matrix.loc["seed1", "seed0"]
    assert matrix.loc["seed2", "seed2"] == 1.0
    pairs = analysis.pairwise_jaccard({"a": A, "b": B, "c": C})
    assert pairs[["a", "b"]].values.tolist() == [["a", "b"], ["a", "c"], ["b", "c"]]


def test_parse_layer():
    assert analysis.parse_layer("transformer.h.9.attn.c_attn") == {"block": 9, "kind": "attention", "matrix": "c_attn"}
    assert analysis.parse_layer("transformer.h.9.mlp.c_proj") == {"block": 9, "kind": "mlp", "matrix": "c_proj"}
    assert analysis.parse_layer("model.layers.11.self_attn.o_proj")["kind"] == "attention"
    assert analysis.parse_layer("model.layers.3.feed_forward.w1")["kind"] == "mlp"
    assert analysis.parse_layer("gpt_neox.layers.2.attention.dense")["kind"] == "attention"


def test_structure_by_block_kind_matrix():
    masks = {
        "t.h.10.attn.c_attn": m(1, 1, 0, 0),
        "t.h.10.mlp.c_fc": m(1, 0, 0, 0, 0, 0),
        "t.h.9.attn.c_attn": m(0, 0, 0, 0),
        "t.h.9.mlp.c_fc": m(1, 1, 1, 0, 0, 0),
    }
    per_matrix = analysis.structure_by_matrix(masks)
    assert per_matrix["layer"].tolist() == [
        "t.h.9.attn.c_attn",
        "t.h.9.mlp.c_fc",
        "t.h.10.attn.c_attn",
        "t.h.10.mlp.c_fc",
    ]  # layer order
    blocks = analysis.structure_by_block(masks).set_index("block")
    assert blocks.loc[9, "n_subnetwork"] == 3 and blocks.loc[9, "n_total"] == 10
    assert blocks.loc[9, "density"] == pytest.approx(0.3) and blocks.loc[10, "share"] == pytest.approx(0.5)
    kinds = analysis.structure_by_kind(masks).set_index("kind")
    assert kinds.loc["attention", "n_subnetwork"] == 2 and kinds.loc["mlp", "n_subnetwork"] == 4
    assert kinds.loc["mlp", "share"] == pytest.approx(4 / 6)
    assert kinds.loc["attention", "density"] == pytest.approx(2 / 8)


# ---------------------------------------------------------------------------------------------
# per-head split


@pytest.fixture(scope="module")
def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=11, n_positions=8, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config), config


@pytest.fixture(scope="module")
def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        num_hidden_layers=1,
        hidden_size=8,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=12,
        vocab_size=11,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config), config


def _zero_masks(model, granularity="weight"):
    return {
        layer.name: torch.zeros(layer.mask_shape(granularity), dtype=torch.bool)
        for layer in masking.find_maskable_layers(model, 1)
    }


def _heads(frame):
    return {(r.matrix, r.head): (r.n_subnetwork, r.n_total) for r in frame.itertuples()}


def test_heads_gpt2_fused_c_attn(gpt2):
    model, config = gpt2
    masks = _zero_masks(model)
    assert masks["transformer.h.0.attn.c_attn"].shape == (8, 24)  # Conv1D [in, 3 * hidden]
    # column 8 + 4 + 1: the k part (columns 8..15), head 1 (its columns 12..15); rows 0..2
    masks["transformer.h.0.attn.c_attn"][0:3, 13] = True
    # v, head 0 (columns 16..19): one full column
    masks["transformer.h.0.attn.c_attn"][:, 17] = True
    # attn.c_proj [in = concatenated heads, out]: input row 5 belongs to head 1
    masks["transformer.h.0.attn.c_proj"][5, :] = True
    masks["transformer.h.0.mlp.c_fc"][:] = True  # MLP: no heads
    heads = _heads(analysis.head_structure(masks, config))
    assert len(heads) == 8  # q, k, v, o x 2 heads
    assert heads[("k", 1)] == (3, 32) and heads[("v", 0)] == (8, 32) and heads[("o", 1)] == (8, 32)
    assert sum(n for n, _ in heads.values()) == 3 + 8 + 8


def test_heads_gpt2_semantics_match_the_attention_code(gpt2):
    # Zeroing the columns the split assigns to k head 1 changes only head 1's keys in GPT-2's code.
    model, config = gpt2
    attn = model.transformer.h[0].attn
    x = torch.randn(1, 3, 8)
    q, k, v = attn.c_attn(x).split(8, dim=2)
    with torch.no_grad():
        saved = attn.c_attn.weight.clone()
        attn.c_attn.weight[:, 12:16] = 0.0
        attn.c_attn.bias.zero_()
        _, k2, _ = attn.c_attn(x).split(8, dim=2)
        attn.c_attn.weight.copy_(saved)
    k_heads, k2_heads = k.view(1, 3, 2, 4), k2.view(1, 3, 2, 4)
    assert torch.equal(k2_heads[:, :, 1], torch.zeros_like(k2_heads[:, :, 1]))
    assert not torch.equal(k_heads[:, :, 0], torch.zeros_like(k_heads[:, :, 0]))


def test_heads_llama_separate_projections_with_gqa(llama):
    model, config = llama
    masks = _zero_masks(model)
    prefix = "model.layers.0.self_attn."
    assert masks[prefix + "k_proj"].shape == (4, 8)  # Linear [n_kv_heads * head_dim, hidden]
    masks[prefix + "q_proj"][4:8, 0] = True  # rows of head 1
    masks[prefix + "k_proj"][:, :] = True  # the single kv head
    masks[prefix + "o_proj"][:, 1] = True  # input column 1 belongs to head 0
    heads = _heads(analysis.head_structure(masks, config))
    assert heads[("q", 1)] == (4, 32) and heads[("q", 0)] == (0, 32)
    assert heads[("k", 0)] == (32, 32) and ("k", 1) not in heads  # one kv head
    assert heads[("v", 0)] == (0, 32)
    assert heads[("o", 0)] == (8, 32) and heads[("o", 1)] == (0, 32)


def test_heads_neuron_masks(gpt2, llama):
    model, config = gpt2
    masks = _zero_masks(model, "neuron_out")
    masks["transformer.h.0.attn.c_attn"][20] = True  # v (16..23), head 1 (20..23)
    heads = _heads(analysis.head_structure(masks, config, "neuron_out"))
    assert heads[("v", 1)] == (1, 4) and ("o", 0) not in heads  # c_proj's outputs are not per head
    model, config = llama
    masks = _zero_masks(model, "neuron_in")
    masks["model.layers.0.self_attn.o_proj"][7] = True
    heads = _heads(analysis.head_structure(masks, config, "neuron_in"))
    assert heads == {("o", 0): (0, 4), ("o", 1): (1, 4)}


def test_heads_shape_mismatch_is_reported(gpt2):
    model, _ = gpt2
    masks = _zero_masks(model)
    with pytest.raises(InputError, match="c_attn"):
        analysis.head_structure(masks, {"n_head": 4, "n_embd": 12})


def test_attention_geometry_from_dicts():
    assert analysis.attention_geometry({"n_head": 12, "n_embd": 768}) == {
        "n_heads": 12,
        "n_kv_heads": 12,
        "head_dim": 64,
        "hidden": 768,
    }
    assert (
        analysis.attention_geometry(
            {"num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576, "head_dim": 64}
        )["n_kv_heads"]
        == 3
    )


def test_neuron_summary():
    masks = {"h.1.mlp.c_fc": m(1, 1, 1, 0), "h.0.mlp.c_fc": m(1, 0, 0, 0), "h.0.attn.c_attn": m(1, 1, 1, 1, 0, 0)}
    summary = analysis.neuron_summary(masks, "neuron_out")
    assert summary["layer"].tolist() == ["h.0.attn.c_attn", "h.0.mlp.c_fc", "h.1.mlp.c_fc"]
    assert summary["n_masked"].tolist() == [4, 1, 3] and summary["side"].unique().tolist() == ["out"]
    assert summary["share_masked"].tolist() == pytest.approx([4 / 6, 0.25, 0.75])
    with pytest.raises(InputError):
        analysis.neuron_summary(masks, "weight")
