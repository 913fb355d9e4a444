"""The trainable mask logits and the samplers that draw training masks from them (small random
GPT-2 / Llama, no downloads)."""

import math

import pytest
import torch
from conftest import mask_logits
from test_masking import gpt2, llama

from knowsubnet.core.errors import InputError
from knowsubnet.method import masking, samplers


@pytest.mark.parametrize("granularity", ["weight", "neuron_in", "neuron_out"])
def test_mask_logits_deterministic_weights_match_masked_weights(granularity):
    model = llama()
    layers = masking.find_maskable_layers(model, top_k=1)
    ml = mask_logits(layers, granularity=granularity, init_prob=0.45)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for v in ml.parameters():
            v.copy_(torch.randn(v.shape, generator=gen))
    eff = ml.effective_weights(deterministic=True)
    with masking.masked_weights(
        layers, masking.binary_masks({k: v.detach() for k, v in ml.logits.items()}), granularity
    ):
        for layer in layers:
            assert torch.equal(eff[layer.name], layer.weight)


def test_mask_logits_init_and_state_dict():
    layers = masking.find_maskable_layers(gpt2(), top_k=2)
    ml = mask_logits(layers, granularity="weight", init_prob=0.45)
    assert all(v.requires_grad and v.dtype == torch.float32 for v in ml.parameters())
    assert math.isclose(float(next(iter(ml.logits.values())).detach()[0, 0]), math.log(0.45 / 0.55), rel_tol=1e-6)
    assert math.isclose(ml.expected_density().item(), 0.45, rel_tol=1e-5)
    assert ml.density() == 0.0  # logit(0.45) < 0: the deterministic subnetwork starts empty
    state = ml.state_dict()
    assert set(state) == {layer.name for layer in layers}
    other = mask_logits(layers, granularity="weight", init_prob=0.9)
    other.load_state_dict(state)
    assert all(torch.equal(other.logits[k], state[k]) for k in state)
    with pytest.raises(InputError):
        mask_logits(layers, granularity="weight", init_prob=1.0)
    with pytest.raises(InputError):
        mask_logits(layers, granularity="rows")


def test_gumbel_sigmoid_sampling_and_threshold():
    logits = torch.tensor([-50.0, 50.0]).repeat(10)
    hard = samplers.gumbel_sigmoid_sample(logits, tau=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(hard, torch.tensor([0.0, 1.0]).repeat(10))
    # P(m = 1) = sigmoid(logit) for the hard sample (tau does not change it)
    logit = torch.full((200_000,), 0.5)
    for tau in (1.0, 0.5):
        m = samplers.gumbel_sigmoid_sample(logit, tau=tau, generator=torch.Generator().manual_seed(1))
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        assert abs(m.mean().item() - torch.sigmoid(torch.tensor(0.5)).item()) < 0.005
    soft = samplers.gumbel_sigmoid_sample(logit[:10], generator=torch.Generator().manual_seed(1), hard=False)
    assert bool(((soft > 0) & (soft < 1)).all())
    # same generator state -> same draw
    a = samplers.gumbel_sigmoid_sample(logit[:100], generator=torch.Generator().manual_seed(7))
    b = samplers.gumbel_sigmoid_sample(logit[:100], generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_hard_concrete_sampling():
    logit = torch.full((200_000,), 0.3)
    z = samplers.hard_concrete_sample(logit, generator=torch.Generator().manual_seed(0))
    assert bool(((z >= 0) & (z <= 1)).all())
    assert (z == 0).any() and (z == 1).any()  # the stretch puts mass exactly at 0 and 1
    l0 = samplers.hard_concrete_l0(torch.tensor(0.3)).item()
    assert abs((z > 0).float().mean().item() - l0) < 0.005
    hard = samplers.hard_concrete_sample(logit[:1000], generator=torch.Generator().manual_seed(0), hard=True)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}


def test_straight_through_gradient_equals_soft_gradient():
    logits = torch.randn(64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    w = torch.randn(64, generator=torch.Generator().manual_seed(1))
    hard = samplers.gumbel_sigmoid_sample(logits, tau=0.7, generator=torch.Generator().manual_seed(2))
    (g_hard,) = torch.autograd.grad((hard * w).sum(), logits)
    soft = samplers.gumbel_sigmoid_sample(logits, tau=0.7, generator=torch.Generator().manual_seed(2), hard=False)
    (g_soft,) = torch.autograd.grad((soft * w).sum(), logits)
    torch.testing.assert_close(g_hard, g_soft)
    assert set(hard.detach().unique().tolist()) <= {0.0, 1.0}
    hc = samplers.hard_concrete_sample(logits, generator=torch.Generator().manual_seed(2), hard=True)
    (g_hc,) = torch.autograd.grad((hc * w).sum(), logits)
    hc_soft = samplers.hard_concrete_sample(logits, generator=torch.Generator().manual_seed(2), hard=False)
    (g_hc_soft,) = torch.autograd.grad((hc_soft * w).sum(), logits)
    torch.testing.assert_close(g_hc, g_hc_soft)


@pytest.mark.parametrize("tau", [1.0, 0.6])
def test_fused_masked_weight_matches_composed_autograd(tau):
    """The fused W * (1 - m) gives the same W_eff and logit gradient as the plain composition."""
    layers = masking.find_maskable_layers(gpt2(), top_k=1)
    fused = mask_logits(layers, granularity="weight", tau=tau)
    plain = mask_logits(layers, granularity="weight", tau=tau)
    with torch.no_grad():
        for a, b in zip(fused.parameters(), plain.parameters()):
            a.copy_(torch.randn(a.shape, generator=torch.Generator().manual_seed(a.numel())))
            b.copy_(a)
    eff = fused.effective_weights(torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    sample = {layer.name: plain.sample_one(layer, gen) for layer in layers}  # the plain draw, layer by layer
    probe = {
        layer.name: torch.randn(layer.weight.shape, generator=torch.Generator().manual_seed(9)) for layer in layers
    }
    loss_f = sum((eff[layer.name] * probe[layer.name]).sum() for layer in layers)
    loss_p = sum((layer.weight.detach() * (1 - sample[layer.name]) * probe[layer.name]).sum() for layer in layers)
    for layer in layers:
        torch.testing.assert_close(eff[layer.name], layer.weight.detach() * (1 - sample[layer.name].detach()))
    loss_f.backward()
    loss_p.backward()
    for a, b in zip(fused.parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("granularity", ["weight", "neuron_out"])
def test_noise_scale_moves_training_draws_to_the_deterministic_mask(granularity):
    """Scale 1 is the plain draw; a small scale samples the evaluated mask (logit > 0) itself."""
    layers = masking.find_maskable_layers(gpt2(), top_k=1)
    ml = mask_logits(layers, granularity=granularity)
    with torch.no_grad():
        for v in ml.parameters():  # logits away from 0, as after training: -4 or +4
            v.copy_(4.0 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1)).sign())
    plain = ml.effective_weights(torch.Generator().manual_seed(5))
    scale_one = ml.effective_weights(torch.Generator().manual_seed(5), noise_scale=1.0)
    annealed = ml.effective_weights(torch.Generator().manual_seed(5), noise_scale=0.01)
    deterministic = ml.effective_weights(deterministic=True)
    assert any(not torch.equal(plain[layer.name], deterministic[layer.name]) for layer in layers)  # noise at scale 1
    for layer in layers:
        assert torch.equal(scale_one[layer.name], plain[layer.name])
        assert torch.equal(annealed[layer.name], deterministic[layer.name])
