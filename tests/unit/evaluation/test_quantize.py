"""Group-wise round-to-nearest quantization (evaluation.quantize): bit-identical to the gguf
package's Q8_0 / Q4_0, zeros stay zero, 4 bits err more than 8, and the model is restored exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from knowsubnet.evaluation import quantize
from knowsubnet.method import masking

pytestmark = pytest.mark.usefixtures("one_thread")

GGUF_TYPES = {8: GGMLQuantizationType.Q8_0, 4: GGMLQuantizationType.Q4_0}


def gguf_round_trip(rows: torch.Tensor, bits: int) -> torch.Tensor:
    array = rows.numpy().astype(np.float32)
    return torch.from_numpy(quants.dequantize(quants.quantize(array, GGUF_TYPES[bits]), GGUF_TYPES[bits]).copy())


def awkward(rows: int, width: int, seed: int) -> torch.Tensor:
    """Gaussian weights with the cases rounding gets wrong: zeros, an all-zero group, halves of a
    scale step, a group whose largest magnitudes tie with opposite signs."""
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, width, generator=generator) * 0.05
    w[w.abs() < 0.01] = 0.0
    w[0, :32] = 0.0
    w[1, :32] = torch.arange(32) * (0.127 / 127) - 0.0155  # many values on a half step of d = 0.001
    w[1, 31] = 0.127
    w[2, 3], w[2, 7] = -0.3, 0.3
    return w


@pytest.mark.parametrize("bits", [8, 4])
def test_rounding_is_gguf_bit_for_bit(bits):
    w = awkward(6, 96, seed=0)
    ours = quantize.quantize_weight(w, bits)
    assert torch.equal(ours, gguf_round_trip(w, bits))
    # GPT-2's Conv1D stores [in, out]: its groups run along the input all the same
    assert torch.equal(quantize.quantize_weight(w.t().contiguous(), bits, transposed=True), ours.t())
    # an input width that is not a multiple of the group: the last group is rounded as if zero-padded
    ragged = w[:, :40]
    padded = torch.nn.functional.pad(ragged, (0, 24))
    assert torch.equal(quantize.quantize_weight(ragged, bits), gguf_round_trip(padded, bits)[:, :40])


def masked_model():
    """A toy GPT-2 with a third of its top block's weights removed (exactly zero)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=50, n_positions=16)).eval()
    with torch.no_grad():
        for layer in masking.find_maskable_layers(model, 1):
            layer.weight[torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(1)) < 1 / 3] = 0.0
    return model


def test_zeros_stay_zero_and_four_bits_err_more_than_eight():
    model = masked_model()
    errors = {}
    for bits in (8, 4):
        stats = quantize.quantization_stats(model, bits)
        with quantize.quantized(model, bits) as inside:
            assert inside == stats  # the stats say what rounding does, the model left alone
        assert stats["zeros"] > 0 and stats["zeros_kept"] == stats["zeros"]
        assert stats["weights"] == sum(layer.weight.numel() for layer in quantize.block_layers(model))
        assert 0.5 < stats["changed_share"] <= 1.0
        errors[bits] = stats["relative_error"]
        assert stats["mean_relative_error"] == pytest.approx(stats["relative_error"], rel=0.5)
    assert errors[8] < 0.01 and 0.03 < errors[4] < 0.2 and errors[4] > 5 * errors[8]


def test_only_block_linear_weights_change_and_all_come_back_exactly():
    model = masked_model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    layers = {f"{layer.name}.weight" for layer in quantize.block_layers(model)}
    zero_before = {name: before[name] == 0 for name in layers}
    ids = torch.randint(50, (2, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    with quantize.quantized(model, 4):
        params = dict(model.named_parameters())
        for name, value in params.items():
            assert torch.equal(value, before[name]) is (name not in layers), name  # embeddings, norms, biases kept
        for name in layers:
            assert (params[name][zero_before[name]] == 0).all()  # a mask's removed weights stay removed
    with pytest.raises(RuntimeError):
        with quantize.quantized(model, 8):
            with torch.no_grad():
                assert (model(input_ids=ids).logits - logits).abs().max() < 0.05 * logits.abs().max()
            raise RuntimeError("restored even when the block fails")
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_a_llama_rounds_its_linear_layers_too():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            num_hidden_layers=2,
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=48,
            vocab_size=40,
        )
    )
    layers = quantize.block_layers(model)
    assert len(layers) == 14  # q k v o gate up down, in both blocks
    saved = [layer.weight.detach().clone() for layer in layers]
    with quantize.quantized(model, 4) as stats:
        assert all(torch.equal(layer.weight, quantize.quantize_weight(s, 4)) for layer, s in zip(layers, saved))
    assert stats["changed"] > 0 and all(torch.equal(layer.weight, s) for layer, s in zip(layers, saved))
    with pytest.raises(ValueError, match="bits"):
        quantize.quantize_weight(saved[0], 3)
