"""The adversary inside the mask's training (train.adversary): a relearning finetune on ControlLM text and
4-bit rounding, and the suppression loss on the attacked remaining model."""

import pytest
import torch
from test_training import ADVERSARY, Killed, config, data, gpt2, kill_at, mask_config, run

from knowsubnet.core.errors import InputError
from knowsubnet.method.masking import binary_masks
from knowsubnet.method.training import MaskTrainer
from knowsubnet.models.gguf_rounding import quantize_weight

pytestmark = pytest.mark.usefixtures("one_thread")


def make(blocks="data", **over):
    target, control, lm = data()
    return MaskTrainer(
        gpt2(),
        target,
        control,
        lm if blocks == "data" else blocks,
        mask_config(init_prob=0.3),
        config(**over),
        seed=0,
        progress=False,
    )


def remove_some(*trainers):
    with torch.no_grad():  # some weights removed from the start (logit > 0), in every run
        for trainer in trainers:
            for value in trainer.mask.logits.values():
                value.view(-1)[::7] = 5.0


def test_relearning_finetunes_the_remaining_weights_on_text_and_adds_their_suppression():
    """relearn: each step one Adam step of delta on ControlLM text (the removed weights held at zero, delta
    back to zero every restart_every steps), and the suppression loss on W_eff + delta beside the plain one,
    weighed adversary.weight; with weight 0 nothing of it runs."""
    plain, trainer = make(), make(adversary=ADVERSARY)
    assert plain.adversary is None
    remove_some(plain, trainer)
    for step in range(1, 6):
        removed = binary_masks(trainer.mask.state_dict())  # what the step's finetune holds at zero
        assert sum(int(r.sum()) for r in removed.values()) > 0
        row, plain_row = trainer.step(), plain.step()
        assert plain_row["suppress_attacked"] == 0.0 and row["suppress_attacked"] != row["suppress"]
        if step == 1:  # the same draws as the plain run (the adversary has its own generator): its losses
            assert row["suppress"] == plain_row["suppress"] and row["controlkg"] == plain_row["controlkg"]
            assert row["loss"] == pytest.approx(plain_row["loss"] + 1.0 * row["suppress_attacked"])
        for layer in trainer.layers:
            delta = trainer.adversary.delta[layer.name].detach()
            assert float(delta.abs().sum()) > 0 and bool((delta[removed[layer.name]] == 0).all())
    # the finetune lowers the text loss on the (nearly fixed) remaining model, then restarts from zero
    weights = trainer.mask.effective_weights(deterministic=True)
    removed = binary_masks(trainer.mask.state_dict())
    text = [trainer.adversary._finetune_step(step, weights, removed) for step in range(7, 11)]
    assert text[-1] < text[0]
    trainer.adversary._finetune_step(11, weights, removed)  # (11 - 1) % 5 == 0: a restart, then one step
    assert all(float(d.detach().abs().max()) <= 1.5e-2 for d in trainer.adversary.delta.values())  # lr 1e-2


def test_quantize_rounds_the_remaining_weights_forward_and_passes_the_gradient_straight_through():
    """quantize: the attacked model is the remaining weights rounded to 4 bits (gguf's Q4_0), with the
    identity as the rounding's gradient; relearn and quantize together round the finetuned weights."""
    trainer = make(adversary=dict(ADVERSARY, attacks=["quantize"]))
    assert trainer.adversary.delta == {}  # no finetune, no text needed
    weights = {
        name: value.detach().clone().requires_grad_(True)
        for name, value in trainer.mask.effective_weights(deterministic=True).items()
    }
    logits = trainer.mask.state_dict()
    attacked = trainer.adversary.attacked(1, weights, logits)
    for layer in trainer.layers:
        expected = quantize_weight(weights[layer.name].detach(), 4, transposed=layer.transposed)
        assert torch.equal(attacked[layer.name].detach(), expected)
        assert not torch.equal(expected, weights[layer.name].detach())
    sum(value.sum() for value in attacked.values()).backward()
    assert all(torch.equal(w.grad, torch.ones_like(w)) for w in weights.values())

    both = make(adversary=dict(ADVERSARY, attacks=["relearn", "quantize"]))
    attacked = both.adversary.attacked(1, {k: v.detach() for k, v in weights.items()}, logits)
    for layer in both.layers:
        finetuned = weights[layer.name].detach() + both.adversary.delta[layer.name].detach()
        assert torch.equal(attacked[layer.name], quantize_weight(finetuned, 4, transposed=layer.transposed))


def test_a_killed_and_resumed_run_with_the_relearning_adversary_is_bit_identical(tmp_path):
    straight = run(tmp_path, "a", adversary=ADVERSARY)
    with pytest.raises(Killed):
        run(tmp_path, "b", callback=kill_at(6), adversary=ADVERSARY)  # checkpoint at step 4; 5-6 recomputed
    resumed = run(tmp_path, "b", adversary=ADVERSARY)
    assert resumed.log == straight.log and all(
        torch.equal(resumed.logits[k], straight.logits[k]) for k in straight.logits
    )


def test_relearning_without_controllm_text_is_one_line_naming_the_key():
    with pytest.raises(InputError, match=r"'train.adversary.attacks': relearn finetunes on ControlLM blocks"):
        make(blocks=None, adversary=ADVERSARY)
    assert make(blocks=None, adversary=dict(ADVERSARY, attacks=["quantize"])).adversary is not None
