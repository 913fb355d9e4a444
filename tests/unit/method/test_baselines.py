"""The baselines: attribution pruning, magnitude-matched random, knowledge neurons, GradDiff / NPO /
RMU, and the removal files (`edits`) every method writes and evaluation applies."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import REPO_ROOT, base_params
from test_training import Killed, config, data, gpt2, kill_at, llama, mask_config

from knowsubnet.core import config as params_config
from knowsubnet.core.errors import InputError
from knowsubnet.method import attribution, edits, masking, unlearning
from knowsubnet.method.training import MaskTrainer

pytestmark = pytest.mark.usefixtures("one_thread")


def trainer_for(model, **over):
    targetkg, controlkg, _ = data()
    return MaskTrainer(
        model, targetkg, controlkg, None, mask_config(top_k_blocks=2), config(**over), seed=0, progress=False
    )


def reference_mask(layers, share=0.05, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return {layer.name: torch.rand(layer.weight.shape, generator=gen) < share for layer in layers}


def counts(masks):
    return {name: int(m.sum()) for name, m in masks.items()}


def scores_of(trainer, batch=5, contrast=1.0, signed=False):
    target = attribution.taylor_terms(trainer, "target", batch)
    return attribution.attribution_scores(target, attribution.taylor_terms(trainer, "control", batch), contrast, signed)


@pytest.mark.parametrize("build", [gpt2, llama])
@pytest.mark.parametrize("signed", [False, True])
def test_attribution_pruning_removes_exactly_the_masks_counts_where_the_score_is_highest(build, signed):
    trainer = trainer_for(build())
    reference = reference_mask(trainer.layers)
    scores = scores_of(trainer, signed=signed)
    pruned = attribution.top_counts(scores, counts(reference))
    assert counts(pruned) == counts(reference)
    for name, mask in pruned.items():
        if 0 < mask.sum() < mask.numel():  # every removed weight scores at least as high as every kept one
            assert scores[name][mask].min() >= scores[name][~mask].max()
    # the score is the TargetKG term minus the ControlKG one: contrast 0 differs
    target_only = scores_of(trainer, contrast=0.0, signed=signed)
    assert any(not torch.equal(scores[n], target_only[n]) for n in scores)


def test_taylor_terms_predict_the_loss_change_of_zeroing_a_few_small_weights():
    trainer = trainer_for(gpt2())
    terms = attribution.taylor_terms(trainer, "target", batch=12)
    layer = trainer.layers[0]
    chosen = torch.zeros(layer.weight.shape, dtype=torch.bool)
    chosen.view(-1)[torch.argsort(layer.weight.detach().abs().flatten())[:20]] = True  # small: first order holds

    def loss(weights):
        (logits,) = trainer._kg_tail_logits(weights, [("target", torch.arange(trainer.n_target))])
        return float(F.cross_entropy(logits.float(), trainer.t_targets[trainer.t_targets != -100]))

    zeroed = {layer.name: layer.weight.detach().masked_fill(chosen, 0.0)}
    predicted = float(terms[layer.name][chosen].sum())
    assert loss(zeroed) - loss(None) == pytest.approx(predicted, rel=0.2, abs=1e-6)


def test_attribution_gradients_do_not_depend_on_the_batch_size():
    trainer = trainer_for(gpt2())
    a, b = scores_of(trainer, batch=3), scores_of(trainer, batch=12)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-7)


def test_magnitude_matched_random_has_the_masks_counts_and_magnitudes():
    model = gpt2()
    layers = masking.find_maskable_layers(model, 2)
    # a mask of the largest weights: a uniform random draw would not match their magnitudes
    reference = {}
    for layer in layers:
        magnitude = layer.weight.detach().abs()
        reference[layer.name] = magnitude >= magnitude.flatten().kthvalue(int(0.9 * magnitude.numel())).values
    drawn = attribution.magnitude_matched(layers, reference, bins=10, generator=torch.Generator().manual_seed(0))
    assert counts(drawn) == counts(reference)
    for layer in layers:
        weight = layer.weight.detach().abs()
        assert weight[drawn[layer.name]].mean() > 0.8 * weight[reference[layer.name]].mean()
        assert not torch.equal(drawn[layer.name], reference[layer.name])  # not the mask itself
    again = attribution.magnitude_matched(layers, reference, bins=10, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(drawn[n], again[n]) for n in drawn)


@pytest.mark.parametrize("build", [gpt2, llama])
def test_neuron_ablation_zeroes_whole_neurons_of_the_mlp_output_projection(build):
    trainer = trainer_for(build())
    scores = attribution.neuron_scores(trainer, ig_steps=3, batch=5)
    control = attribution.control_neuron_scores(trainer, 3, 5, torch.Generator().manual_seed(0))
    specific = {n: scores[n] - 1.0 * control[n] for n in scores}
    assert any(not torch.equal(scores[n], specific[n]) for n in scores)
    downs = attribution.down_projections(trainer.layers)
    assert set(scores) == {layer.name for layer in downs} and len(downs) == 2
    n = 5
    masks = attribution.neuron_masks(trainer.layers, scores, n)
    by_name = {layer.name: layer for layer in trainer.layers}
    removed_neurons = 0
    for name, mask in masks.items():
        layer = by_name[name]
        if layer not in downs:
            assert not mask.any()
            continue
        per_input = mask.any(dim=1 if layer.transposed else 0)  # Conv1D weight is [in, out]
        whole = mask.all(dim=1 if layer.transposed else 0)
        assert torch.equal(per_input, whole)  # whole input columns only
        removed_neurons += int(whole.sum())
    assert removed_neurons == n
    # the chosen neurons are the highest-scoring ones over both layers
    flat = torch.cat([scores[layer.name] for layer in downs])
    assert flat.topk(n).values.min() >= flat.sort(descending=True).values[n]


def test_neuron_count_matches_the_masks_weight_budget():
    model = gpt2()
    layers = masking.find_maskable_layers(model, 2)
    reference = reference_mask(layers)
    width = attribution.down_projections(layers)[0].out_features
    assert attribution.neuron_count(reference, layers) == round(sum(counts(reference).values()) / width)


def tail_nll(model, facts):
    with torch.no_grad():
        logits = model(input_ids=facts.input_ids).logits
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), facts.targets.reshape(-1), ignore_index=-100))


def unlearn(model, method, **over):
    targetkg, controlkg, lm = data()
    cfg = dataclasses.replace(getattr(base_params().baselines, method), steps=8, lr=1e-2, select_every=4, **over)
    trainer = unlearning.UnlearningTrainer(
        model, targetkg, controlkg, lm, mask_config(top_k_blocks=2), config(), method, cfg, seed=0, progress=False
    )
    result = trainer.train()
    edit = edits.Edit("weights", result.logits, {})
    with edits.applied(trainer.layers, edit):
        after = tail_nll(model, targetkg)
    return trainer.layers, edit, after


@pytest.mark.parametrize("method", ["graddiff", "npo"])  # RMU: test_rmu_* below
def test_finetuning_unlearning_raises_the_targetkg_loss_and_only_moves_the_masked_layers(method):
    model = gpt2()
    before_weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    before = tail_nll(model, data()[0])
    layers, edit, after = unlearn(model, method)
    _, _, retain_only = unlearn(model, method, lambda_forget=0.0)
    # the intended direction: the target's tails get less likely, by far more than the retain terms move them
    assert after - before > 0.3 and after - before > 3 * abs(retain_only - before), (before, after, retain_only)
    # the model itself is untouched by training, and only the masked layers differ in the edit
    assert all(torch.equal(p, before_weights[n]) for n, p in model.named_parameters())
    assert set(edit.tensors) == {layer.name for layer in layers}
    assert edits.change_stats(model, layers, edit)["changed_share_masked_layers"] > 0.9


def test_npo_loss_is_log2_times_2_over_beta_at_the_reference_and_falls_as_the_tail_gets_unlikely():
    targets = torch.tensor([[-100, 3, 4], [-100, -100, 2]])
    logits = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    ref = unlearning.per_fact_logprob(logits, targets)
    at_ref = unlearning.npo_forget(logits, targets, ref, beta=0.5)
    assert at_ref.item() == pytest.approx(2 / 0.5 * torch.log(torch.tensor(2.0)).item(), rel=1e-5)
    lower = logits.clone()
    lower[torch.arange(3), torch.tensor([3, 4, 2])] -= 5.0  # every tail token less likely
    assert unlearning.npo_forget(lower, targets, ref, beta=0.5) < at_ref


def test_weight_edits_round_trip_apply_restore_and_have_a_same_norm_random_counterpart(tmp_path):
    model = llama()
    layers = masking.find_maskable_layers(model, 2)
    gen = torch.Generator().manual_seed(0)
    new = {
        layer.name: layer.weight.detach() + 0.01 * torch.randn(layer.weight.shape, generator=gen) for layer in layers
    }
    path = tmp_path / "removal.safetensors"
    edits.save_weights_edit(path, new, {"top_k_blocks": "2", "method": "npo"})
    edit = edits.load_edit(path)
    assert edit.kind == "weights" and edits.edit_layers(model, edit, "x") == layers
    original = {layer.name: layer.weight.detach().clone() for layer in layers}
    with edits.applied(layers, edit):
        assert all(torch.equal(layer.weight, new[layer.name]) for layer in layers)
    assert all(torch.equal(layer.weight, original[layer.name]) for layer in layers)
    random = edits.random_like(edit, layers, torch.Generator().manual_seed(1))
    for layer in layers:
        delta, random_delta = new[layer.name] - original[layer.name], random.tensors[layer.name] - original[layer.name]
        assert random_delta.norm().item() == pytest.approx(delta.norm().item(), rel=1e-4)
        assert F.cosine_similarity(delta.flatten(), random_delta.flatten(), dim=0).abs() < 0.2


def test_a_neuron_masks_random_counterpart_draws_whole_neurons():
    model = gpt2()
    layers = masking.find_maskable_layers(model, 2)
    trainer_scores = {
        layer.name: torch.arange(layer.in_features, dtype=torch.float32)
        for layer in attribution.down_projections(layers)
    }
    masks = attribution.neuron_masks(layers, trainer_scores, 6)
    edit = edits.mask_edit(masks, "weight", {"unit": "input_neuron"})
    random = edits.random_like(edit, layers, torch.Generator().manual_seed(0))
    assert counts(random.tensors) == counts(masks)
    for layer in attribution.down_projections(layers):
        mask = random.tensors[layer.name]
        assert torch.equal(mask.any(dim=1), mask.all(dim=1))  # GPT-2 Conv1D: input neurons are rows


def test_a_removal_file_of_an_unknown_kind_is_refused_naming_it(tmp_path):
    from safetensors.torch import save_file

    from knowsubnet.core.errors import InputError

    path = tmp_path / "removal.safetensors"
    save_file({"x": torch.zeros(2)}, str(path), metadata={"kind": "pruned"})
    with pytest.raises(InputError, match="removal.safetensors: metadata 'kind' = 'pruned'"):
        edits.load_edit(path)


def test_a_setting_is_chosen_on_validation_as_the_masks_checkpoint_is():
    from knowsubnet.method.baselines import choose

    original = {"targetkg": 10.0, "controlkg": 10.0, "controllm": 10.0}

    def row(target, control, lm=10.0):
        return {"val_targetkg_ppl": target, "val_controlkg_ppl": control, "val_controllm_ppl": lm}

    # reaching x10 on TargetKG first, then the least ControlKG + ControlLM damage
    assert choose([row(50, 30), row(200, 12), row(500, 40), row(90, 10)], original, 10.0) == 1
    # none reaches x10: the best TargetKG ratio per damage
    assert choose([row(20, 10), row(40, 40), row(30, 12)], original, 10.0) == 2  # log 3 - log 1.2 > log 2


# -- RMU ---------------------------------------------------------------------------------------------


def rmu_trainer(model, **over):
    targetkg, controlkg, lm = data()
    cfg = dataclasses.replace(
        base_params().baselines.rmu,
        **{"steps": 30, "lr": 1e-2, "select_every": 10, "steering_coeff": 1.0, "alpha": 10.0, **over},
    )
    return unlearning.UnlearningTrainer(
        model, targetkg, controlkg, lm, mask_config(top_k_blocks=2), config(), "rmu", cfg, seed=0, progress=False
    )


@torch.no_grad()
def steered_hidden(trainer, weights):
    """The steered block's output: TargetKG and ControlKG tail positions, every ControlLM position."""
    target, control = trainer._kg_tail_hidden(
        weights, [("target", torch.arange(trainer.n_target)), ("control", torch.arange(trainer.n_control))]
    )
    return target, control, trainer._layer_output(trainer.lm_hidden, weights).flatten(0, 1)


def mean_sq(a, b):
    return float(((a - b) ** 2).sum(dim=-1).mean())


@pytest.mark.parametrize("build", [gpt2, llama])
def test_rmu_steers_targetkg_hidden_states_towards_c_u_and_keeps_the_retain_ones(build):
    trainer = rmu_trainer(build(), steps=60)
    before = steered_hidden(trainer, None)
    result = trainer.train()
    after = steered_hidden(trainer, result.logits)
    target_moved = mean_sq(after[0], before[0])
    # TargetKG's hidden states went most of the way to c u (|c u| = 1, about 6x their own norm) ...
    assert mean_sq(after[0], trainer.control) < 0.1 * mean_sq(before[0], trainer.control)
    # ... while ControlKG's and ControlLM's moved far less than TargetKG's did
    assert mean_sq(after[1], before[1]) < 0.02 * target_moved
    assert mean_sq(after[2], before[2]) < 0.02 * target_moved
    assert result.log[-1]["suppress"] < 0.1 * result.log[0]["suppress"]  # the log's forget MSE


def test_rmu_makes_a_memorised_model_forget_targetkg_and_keep_controlkg():
    from types import SimpleNamespace

    from test_training import facts, memorised_gpt2

    target, control = facts(10, 6, seed=10), facts(20, 6, seed=11)
    model = memorised_gpt2(
        SimpleNamespace(
            input_ids=torch.cat([target.input_ids, control.input_ids]),
            targets=torch.cat([target.targets, control.targets]),
        )
    )
    assert tail_nll(model, target) < 0.05 and tail_nll(model, control) < 0.05
    cfg = dataclasses.replace(
        base_params().baselines.rmu,
        steps=40,
        lr=1e-2,
        select_every=10,
        steering_coeff=5.0,
        alpha=10.0,
        batch=params_config.Batch(10, 10, 0),
    )
    trainer = unlearning.UnlearningTrainer(
        model, target, control, None, mask_config(top_k_blocks=2), config(), "rmu", cfg, seed=0, progress=False
    )
    result = trainer.train()
    with edits.applied(trainer.layers, edits.Edit("weights", result.logits, {})):
        assert tail_nll(model, target) > 2.0  # the memorised tails are gone (a near-certain 0.002 before)
        assert tail_nll(model, control) < 0.05


def test_rmu_trains_only_the_masked_layers_at_or_below_the_steered_block():
    model = gpt2()
    trainer = rmu_trainer(model, steps=4, layer=2)  # the lower of the 2 masked blocks
    assert trainer.rmu_block == trainer.first_block == 2
    assert {layer.block for layer in trainer.trained} == {2} and len(trainer.trained) < len(trainer.layers)
    result = trainer.train()
    for layer in trainer.layers:
        same = torch.equal(result.logits[layer.name], layer.weight.detach())
        assert same == (layer.block > trainer.rmu_block), layer.name
    # the default, the model's last block: every masked layer trains
    top = rmu_trainer(gpt2(), steps=1)
    assert top.rmu_block == 3 and top.trained == top.layers
    with pytest.raises(InputError, match=r"'baselines\.rmu\.layer': 3 .* only 2 are masked"):
        rmu_trainer(gpt2(), layer=3)


def test_rmu_control_vector_has_norm_c_and_depends_on_the_seed_only():
    c = unlearning.control_vector(64, 6.5, seed=3)
    assert c.norm().item() == pytest.approx(6.5, rel=1e-6) and bool((c > 0).all())  # WMDP's draw: uniform, scaled
    assert torch.equal(c, unlearning.control_vector(64, 6.5, seed=3))
    assert not torch.equal(c, unlearning.control_vector(64, 6.5, seed=4))
    h = torch.randn(5, 64)
    assert unlearning.rmu_forget(h, c).item() == pytest.approx(float(((h - c) ** 2).mean()), rel=1e-6)


def run_unlearning(tmp_path, name, method, callback=None):
    targetkg, controlkg, lm = data()
    cfg = dataclasses.replace(getattr(base_params().baselines, method), steps=12, lr=1e-2, select_every=4)
    trainer = unlearning.UnlearningTrainer(
        gpt2(),
        targetkg,
        controlkg,
        lm,
        mask_config(top_k_blocks=2),
        config(checkpoint_every=4),
        method,
        cfg,
        seed=0,
        progress=False,
        checkpoint_path=tmp_path / name / "checkpoint.pt",
        callback=callback,
    )
    return trainer.train()


@pytest.mark.parametrize("method", unlearning.METHODS)
def test_killed_and_resumed_unlearning_is_bit_identical(tmp_path, caplog, method):
    straight = run_unlearning(tmp_path, "a", method)
    with pytest.raises(Killed):
        run_unlearning(tmp_path, "b", method, callback=kill_at(6))  # checkpoint at step 4; 5-6 recomputed
    with caplog.at_level("INFO", logger="knowsubnet.method.training"):
        resumed = run_unlearning(tmp_path, "b", method)
    assert "at step 4" in caplog.text  # resumed, not restarted
    assert resumed.steps == straight.steps == 12 and resumed.log == straight.log
    assert all(torch.equal(resumed.logits[n], straight.logits[n]) for n in straight.logits)
    assert resumed.final_losses == straight.final_losses


def test_rmu_settings_are_typed_and_validated(tmp_path):
    params = base_params()
    assert isinstance(params.baselines.rmu, params_config.Rmu) and "rmu" in unlearning.METHODS
    schema, base = REPO_ROOT / "config" / "params.schema.yaml", REPO_ROOT / "config" / "base.yaml"
    for override, key in [
        ({"baselines": {"rmu": {"layer": 0}}}, "baselines.rmu.layer"),
        ({"baselines": {"rmu": {"steering_coeff": 0}}}, "baselines.rmu.steering_coeff"),
        ({"baselines": {"rmu": {"alpha": -1}}}, "baselines.rmu.alpha"),
        ({"baselines": {"rmu": {"batch": {"targetkg": 0}}}}, "baselines.rmu.batch.targetkg"),
        ({"baselines": {"rmu": {"beta": 0.1}}}, "baselines.rmu"),
        ({"run": {"baselines": ["rmu", "rmu2"]}}, "run.baselines.1"),
    ]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump(override))
        with pytest.raises(InputError, match=f"params key '{key}"):
            params_config.load([base, bad], schema)
    ok = tmp_path / "ok.yaml"
    ok.write_text(yaml.safe_dump({"run": {"baselines": ["graddiff", "npo", "rmu"]}}))
    assert params_config.load([base, ok], schema).run.baselines == ["graddiff", "npo", "rmu"]
    with pytest.raises(ValueError, match="settings of another method"):  # NPO's settings for RMU
        unlearning.UnlearningTrainer(
            gpt2(), *data(), mask_config(top_k_blocks=2), config(), "rmu", params.baselines.npo, seed=0, progress=False
        )
