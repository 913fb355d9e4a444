"""Mask layers, granularities, samplers and mask files (small random GPT-2 / Llama, no downloads)."""

import math
import os
import stat

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from knowsubnet.core.errors import InputError
from knowsubnet.method import masking


def gpt2(n_layer=4):
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=32, n_head=4, vocab_size=50, n_positions=32,
                                      bos_token_id=0, eos_token_id=0)).eval()


def llama(n_layer=4):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=n_layer, hidden_size=32, intermediate_size=48,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=50,
                                        max_position_embeddings=32, bos_token_id=0, eos_token_id=0,
                                        pad_token_id=0)).eval()


def test_find_layers_gpt2():
    layers = masking.find_maskable_layers(gpt2(), top_k=2)
    names = [l.name for l in layers]
    assert names == [f"transformer.h.{b}.{n}" for b in (2, 3)
                     for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert all(l.transposed for l in layers)
    c_fc = layers[2]
    assert (c_fc.in_features, c_fc.out_features) == (32, 128)
    assert c_fc.mask_shape("weight") == (32, 128)  # Conv1D native layout [in, out]
    assert c_fc.mask_shape("neuron_in") == (32,) and c_fc.mask_shape("neuron_out") == (128,)


def test_find_layers_llama():
    layers = masking.find_maskable_layers(llama(), top_k=1)
    names = [l.name.split("model.layers.3.")[1] for l in layers]
    assert names == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert not any(l.transposed for l in layers)
    down = layers[-1]
    assert down.mask_shape("weight") == (32, 48)  # nn.Linear native layout [out, in]
    assert (down.in_features, down.out_features) == (48, 32)
    assert "lm_head" not in " ".join(l.name for l in layers)
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
    before = {l.name: l.weight.detach().clone() for l in layers}
    masks = {l.name: torch.rand(l.weight.shape, generator=torch.Generator().manual_seed(1)) > 0.7 for l in layers}
    with masking.masked_weights(layers, masks, "weight"):
        for l in layers:
            assert bool((l.weight[masks[l.name]] == 0).all())
            assert torch.equal(l.weight[~masks[l.name]], before[l.name][~masks[l.name]])
    with masking.masked_weights(layers, masks, "weight", keep="subnetwork"):
        for l in layers:
            assert bool((l.weight[~masks[l.name]] == 0).all())
    for l in layers:
        assert torch.equal(l.weight, before[l.name])


@pytest.mark.parametrize("granularity", ["weight", "neuron_in", "neuron_out"])
def test_mask_logits_deterministic_weights_match_masked_weights(granularity):
    model = llama()
    layers = masking.find_maskable_layers(model, top_k=1)
    ml = masking.MaskLogits(layers, granularity, init_prob=0.45)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for v in ml.parameters():
            v.copy_(torch.randn(v.shape, generator=gen))
    eff = ml.effective_weights(deterministic=True)
    with masking.masked_weights(layers, masking.binary_masks({k: v.detach() for k, v in ml.logits.items()}),
                                granularity):
        for l in layers:
            assert torch.equal(eff[l.name], l.weight)


def test_mask_logits_init_and_state_dict():
    layers = masking.find_maskable_layers(gpt2(), top_k=2)
    ml = masking.MaskLogits(layers, "weight", init_prob=0.45)
    assert all(v.requires_grad and v.dtype == torch.float32 for v in ml.parameters())
    assert math.isclose(float(next(iter(ml.logits.values())).detach()[0, 0]), math.log(0.45 / 0.55), rel_tol=1e-6)
    assert math.isclose(ml.expected_density().item(), 0.45, rel_tol=1e-5)
    assert ml.density() == 0.0  # logit(0.45) < 0: the deterministic subnetwork starts empty
    state = ml.state_dict()
    assert set(state) == {l.name for l in layers}
    other = masking.MaskLogits(layers, "weight", init_prob=0.9)
    other.load_state_dict(state)
    assert all(torch.equal(other.logits[k], state[k]) for k in state)
    with pytest.raises(InputError):
        masking.MaskLogits(layers, "weight", init_prob=1.0)
    with pytest.raises(InputError):
        masking.MaskLogits(layers, "rows")


def test_gumbel_sigmoid_sampling_and_threshold():
    logits = torch.tensor([-50.0, 50.0]).repeat(10)
    hard = masking.gumbel_sigmoid_sample(logits, tau=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(hard, torch.tensor([0.0, 1.0]).repeat(10))
    # P(m = 1) = sigmoid(logit) for the hard sample (tau does not change it)
    logit = torch.full((200_000,), 0.5)
    for tau in (1.0, 0.5):
        m = masking.gumbel_sigmoid_sample(logit, tau=tau, generator=torch.Generator().manual_seed(1))
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        assert abs(m.mean().item() - torch.sigmoid(torch.tensor(0.5)).item()) < 0.005
    soft = masking.gumbel_sigmoid_sample(logit[:10], generator=torch.Generator().manual_seed(1), hard=False)
    assert bool(((soft > 0) & (soft < 1)).all())
    # same generator state -> same draw
    a = masking.gumbel_sigmoid_sample(logit[:100], generator=torch.Generator().manual_seed(7))
    b = masking.gumbel_sigmoid_sample(logit[:100], generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_hard_concrete_sampling():
    logit = torch.full((200_000,), 0.3)
    z = masking.hard_concrete_sample(logit, generator=torch.Generator().manual_seed(0))
    assert bool(((z >= 0) & (z <= 1)).all())
    assert (z == 0).any() and (z == 1).any()  # the stretch puts mass exactly at 0 and 1
    l0 = masking.hard_concrete_l0(torch.tensor(0.3)).item()
    assert abs((z > 0).float().mean().item() - l0) < 0.005
    hard = masking.hard_concrete_sample(logit[:1000], generator=torch.Generator().manual_seed(0), hard=True)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}


def test_straight_through_gradient_equals_soft_gradient():
    logits = torch.randn(64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    w = torch.randn(64, generator=torch.Generator().manual_seed(1))
    hard = masking.gumbel_sigmoid_sample(logits, tau=0.7, generator=torch.Generator().manual_seed(2))
    (g_hard,) = torch.autograd.grad((hard * w).sum(), logits)
    soft = masking.gumbel_sigmoid_sample(logits, tau=0.7, generator=torch.Generator().manual_seed(2), hard=False)
    (g_soft,) = torch.autograd.grad((soft * w).sum(), logits)
    torch.testing.assert_close(g_hard, g_soft)
    assert set(hard.detach().unique().tolist()) <= {0.0, 1.0}
    hc = masking.hard_concrete_sample(logits, generator=torch.Generator().manual_seed(2), hard=True)
    (g_hc,) = torch.autograd.grad((hc * w).sum(), logits)
    hc_soft = masking.hard_concrete_sample(logits, generator=torch.Generator().manual_seed(2), hard=False)
    (g_hc_soft,) = torch.autograd.grad((hc_soft * w).sum(), logits)
    torch.testing.assert_close(g_hc, g_hc_soft)


@pytest.mark.parametrize("tau", [1.0, 0.6])
def test_fused_masked_weight_matches_composed_autograd(tau):
    """The fused W * (1 - m) gives the same W_eff and logit gradient as the plain composition."""
    layers = masking.find_maskable_layers(gpt2(), top_k=1)
    fused = masking.MaskLogits(layers, "weight", tau=tau)
    plain = masking.MaskLogits(layers, "weight", tau=tau)
    with torch.no_grad():
        for a, b in zip(fused.parameters(), plain.parameters()):
            a.copy_(torch.randn(a.shape, generator=torch.Generator().manual_seed(a.numel())))
            b.copy_(a)
    eff = fused.effective_weights(torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    sample = {l.name: plain.sample_one(l, gen) for l in layers}  # the plain draw, layer by layer
    probe = {l.name: torch.randn(l.weight.shape, generator=torch.Generator().manual_seed(9)) for l in layers}
    loss_f = sum((eff[l.name] * probe[l.name]).sum() for l in layers)
    loss_p = sum((l.weight.detach() * (1 - sample[l.name]) * probe[l.name]).sum() for l in layers)
    for l in layers:
        torch.testing.assert_close(eff[l.name], l.weight.detach() * (1 - sample[l.name].detach()))
    loss_f.backward()
    loss_p.backward()
    for a, b in zip(fused.parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("granularity", ["weight", "neuron_out"])
def test_noise_scale_moves_training_draws_to_the_deterministic_mask(granularity):
    """Scale 1 is the plain draw; a small scale samples the evaluated mask (logit > 0) itself."""
    layers = masking.find_maskable_layers(gpt2(), top_k=1)
    ml = masking.MaskLogits(layers, granularity)
    with torch.no_grad():
        for v in ml.parameters():  # logits away from 0, as after training: -4 or +4
            v.copy_(4.0 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1)).sign())
    plain = ml.effective_weights(torch.Generator().manual_seed(5))
    scale_one = ml.effective_weights(torch.Generator().manual_seed(5), noise_scale=1.0)
    annealed = ml.effective_weights(torch.Generator().manual_seed(5), noise_scale=0.01)
    deterministic = ml.effective_weights(deterministic=True)
    assert any(not torch.equal(plain[l.name], deterministic[l.name]) for l in layers)  # noise at scale 1
    for l in layers:
        assert torch.equal(scale_one[l.name], plain[l.name])
        assert torch.equal(annealed[l.name], deterministic[l.name])


def test_random_masks_like_counts():
    gen = torch.Generator().manual_seed(0)
    masks = {"a": torch.rand(20, 30, generator=gen) > 0.9, "b": torch.zeros(7, dtype=torch.bool),
             "c": torch.ones(5, 4, dtype=torch.bool)}
    rnd = masking.random_masks_like(masks, torch.Generator().manual_seed(1))
    for k, mask in masks.items():
        assert rnd[k].shape == mask.shape and rnd[k].dtype == torch.bool
        assert int(rnd[k].sum()) == int(mask.sum())
    assert not torch.equal(rnd["a"], masks["a"])
    again = masking.random_masks_like(masks, torch.Generator().manual_seed(1))
    assert all(torch.equal(rnd[k], again[k]) for k in masks)


def test_save_load_mask(tmp_path):
    layers = masking.find_maskable_layers(gpt2(), top_k=1)
    logits = {l.name: torch.randn(l.mask_shape("neuron_out")) for l in layers}
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
    metadata = {"granularity": "weight", "model": "m", "target": "IsA", "seed": 0, "top_k_blocks": 1,
                "sampler": "gumbel_sigmoid"}
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
