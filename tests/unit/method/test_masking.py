"""Mask layers, granularities, applied masks and mask files (small random GPT-2 / Llama, no downloads)."""

import os
import stat

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from knowsubnet.core.errors import InputError
from knowsubnet.method import masking


def gpt2(n_layer=4):
    torch.manual_seed(0)
    return GPT2LMHeadModel(
        GPT2Config(n_layer=n_layer, n_embd=32, n_head=4, vocab_size=50, n_positions=32, bos_token_id=0, eos_token_id=0)
    ).eval()


def llama(n_layer=4):
    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            num_hidden_layers=n_layer,
            hidden_size=32,
            intermediate_size=48,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=50,
            max_position_embeddings=32,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
    ).eval()


def test_find_layers_gpt2():
    layers = masking.find_maskable_layers(gpt2(), top_k=2)
    names = [layer.name for layer in layers]
    assert names == [
        f"transformer.h.{b}.{n}" for b in (2, 3) for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    ]
    assert all(layer.transposed for layer in layers)
    c_fc = layers[2]
    assert (c_fc.in_features, c_fc.out_features) == (32, 128)
    assert c_fc.mask_shape("weight") == (32, 128)  # Conv1D native layout [in, out]
    assert c_fc.mask_shape("neuron_in") == (32,) and c_fc.mask_shape("neuron_out") == (128,)


def test_find_layers_llama():
    layers = masking.find_maskable_layers(llama(), top_k=1)
    names = [layer.name.split("model.layers.3.")[1] for layer in layers]
    assert names == [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ]
    assert not any(layer.transposed for layer in layers)
    down = layers[-1]
    assert down.mask_shape("weight") == (32, 48)  # nn.Linear native layout [out, in]
    assert (down.in_features, down.out_features) == (48, 32)
    assert "lm_head" not in " ".join(layer.name for layer in layers)
    with pytest.raises(InputError):
        masking.find_maskable_layers(llama(), top_k=5)


@pytest.mark.parametrize("build", [gpt2, llama])
@pytest.mark.parametrize("granularity", ["neuron_in", "neuron_out"])
def test_neuron_masks_remove_features(build, granularity):
    """Masking input feature i == zeroing x_i; masking output j == output j is its bias only."""
    model = build()
    layer = masking.find_maskable_layers(model, top_k=1)[0]
    n = layer.in_features if granularity == "neuron_in" else layer.out_features
    mask = torch.zeros(n, dtype=torch.bool)
    mask[[1, 5]] = True
    x = torch.randn(3, layer.in_features)
    with torch.no_grad():
        if granularity == "neuron_in":
            x_zeroed = x.clone()
            x_zeroed[:, [1, 5]] = 0
            expected = layer.module(x_zeroed)
        else:
            expected = layer.module(x)
            bias = layer.module.bias
            expected[:, [1, 5]] = 0 if bias is None else bias[[1, 5]]
        with masking.masked_weights([layer], {layer.name: mask}, granularity):
            got = layer.module(x)
    torch.testing.assert_close(got, expected)


def test_weight_mask_application_and_restore():
    model = gpt2()
    layers = masking.find_maskable_layers(model, top_k=1)
    before = {layer.name: layer.weight.detach().clone() for layer in layers}
    masks = {
        layer.name: torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(1)) > 0.7 for layer in layers
    }
    with masking.masked_weights(layers, masks, "weight"):
        for layer in layers:
            assert bool((layer.weight[masks[layer.name]] == 0).all())
            assert torch.equal(layer.weight[~masks[layer.name]], before[layer.name][~masks[layer.name]])
    with masking.masked_weights(layers, masks, "weight", keep="subnetwork"):
        for layer in layers:
            assert bool((layer.weight[~masks[layer.name]] == 0).all())
    for layer in layers:
        assert torch.equal(layer.weight, before[layer.name])


def test_random_masks_like_counts():
    gen = torch.Generator().manual_seed(0)
    masks = {
        "a": torch.rand(20, 30, generator=gen) > 0.9,
        "b": torch.zeros(7, dtype=torch.bool),
        "c": torch.ones(5, 4, dtype=torch.bool),
    }
    rnd = masking.random_masks_like(masks, torch.Generator().manual_seed(1))
    for k, mask in masks.items():
        assert rnd[k].shape == mask.shape and rnd[k].dtype == torch.bool
        assert int(rnd[k].sum()) == int(mask.sum())
    assert not torch.equal(rnd["a"], masks["a"])
    again = masking.random_masks_like(masks, torch.Generator().manual_seed(1))
    assert all(torch.equal(rnd[k], again[k]) for k in masks)


def test_save_load_mask(tmp_path):
    layers = masking.find_maskable_layers(gpt2(), top_k=1)
    logits = {layer.name: torch.randn(layer.mask_shape("neuron_out")) for layer in layers}
    path = tmp_path / "mask.safetensors"
    masking.save_mask(path, logits, {"granularity": "neuron_out", "model": "m", "target": "IsA", "seed": 0})
    loaded, meta = masking.load_mask(path)
    assert meta == {"granularity": "neuron_out", "model": "m", "target": "IsA", "seed": "0"}
    assert all(torch.equal(loaded[k], logits[k]) for k in logits)
    masking.check_mask_matches(layers, loaded, "neuron_out", str(path))
    with pytest.raises(InputError):
        masking.check_mask_matches(layers, loaded, "weight", str(path))
    masking.save_mask(tmp_path / "nogran.safetensors", logits, {"model": "m"})
    with pytest.raises(InputError):
        masking.load_mask(tmp_path / "nogran.safetensors")


def test_saving_the_same_mask_twice_writes_the_same_bytes(tmp_path):
    # safetensors orders header metadata by a hash map, differently on every save
    logits = {"b.weight": torch.randn(3, 4), "a.weight": torch.randn(2)}
    metadata = {
        "granularity": "weight",
        "model": "m",
        "target": "IsA",
        "seed": 0,
        "top_k_blocks": 1,
        "sampler": "gumbel_sigmoid",
    }
    paths = [tmp_path / f"{i}.safetensors" for i in range(6)]
    for path in paths:
        masking.save_mask(path, logits, metadata)
    assert len({path.read_bytes() for path in paths}) == 1
    loaded, meta = masking.load_mask(paths[0])
    assert meta == {k: str(v) for k, v in metadata.items()}
    assert all(torch.equal(loaded[k], logits[k]) for k in logits)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(paths[0].stat().st_mode) == 0o666 & ~umask  # not safetensors' own 0600


def test_load_mask_rejects_a_non_mask_file(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"not a mask")
    with pytest.raises(InputError):
        masking.load_mask(tmp_path / "bad.safetensors")
