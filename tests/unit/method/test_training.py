"""The mask trainer: cached-prefix forward, resume bit-identity, determinism, a short run that works."""

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from knowsubnet.core import config as params_config
from knowsubnet.core.config import Mask, Select, Train
from knowsubnet.core.errors import InputError
from knowsubnet.method import masking, objectives
from knowsubnet.method.batching import length_groups
from knowsubnet.method.training import MaskTrainer
from knowsubnet.models.top_blocks import TopBlocks
from knowsubnet.scoring.facts import score_facts, summarize_facts
from knowsubnet.scoring.text import lm_ppl

VOCAB = 40


def train_mask(*args, **kwargs):
    return MaskTrainer(*args, **kwargs).train()


pytestmark = pytest.mark.usefixtures("one_thread")


def gpt2(n_layer=4, seed=0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(
        GPT2Config(
            n_layer=n_layer,
            n_embd=32,
            n_head=4,
            vocab_size=VOCAB,
            n_positions=32,
            bos_token_id=0,
            eos_token_id=0,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    ).eval()


def llama(n_layer=4, seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(
        LlamaConfig(
            num_hidden_layers=n_layer,
            hidden_size=32,
            intermediate_size=48,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=VOCAB,
            max_position_embeddings=32,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
    ).eval()


def facts(n, width, seed):
    """Right-padded toy facts: random prompts of varied length, 1-2 tail tokens at the end."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.zeros(n, width, dtype=torch.long)
    targets = torch.full((n, width), -100)
    for i in range(n):
        length = int(torch.randint(3, width + 1, (1,), generator=gen))
        n_tail = int(torch.randint(1, 3, (1,), generator=gen))
        input_ids[i, :length] = torch.randint(1, VOCAB, (length,), generator=gen)
        targets[i, length - n_tail : length] = torch.randint(1, VOCAB, (n_tail,), generator=gen)
        input_ids[i, length - n_tail + 1 : length] = targets[i, length - n_tail : length - 1]  # teacher forcing
    return SimpleNamespace(input_ids=input_ids, targets=targets)


def data(seed=0):
    return (
        facts(12, 7, seed),
        facts(24, 9, seed + 1),
        torch.randint(1, VOCAB, (6, 12), generator=torch.Generator().manual_seed(seed)),
    )


# A relearning adversary strong enough to move a toy model in a few steps (test_adversary)
ADVERSARY = {"weight": 1.0, "attacks": ["relearn"], "lr": 1.0e-2, "restart_every": 5, "batch": 2, "bits": 4}

# The mask and training settings these tests were written for (not a preset's).
MASK = {
    "granularity": "weight",
    "top_k_blocks": 2,
    "sampler": "gumbel_sigmoid",
    "init_prob": 0.45,
    "tau": 1.0,
    "hard_concrete": {"beta": 2.0 / 3.0, "gamma": -0.1, "zeta": 1.1, "hard": False},
}
TRAIN = {
    "steps": 12,
    "lr": 0.2,
    "warmup_frac": 0.1,
    "lambda_suppress": 1.5,
    "lambda_controlkg": 1.0,
    "lambda_controllm": 1.0,
    "lambda_expression": 0.0,
    "lambda_hidden": 0.0,
    "hidden_layer": 1,
    "suppress_objective": "uniform",
    "npo_beta": 0.1,
    "lambda_other_tails": 0.0,
    "adversary": {"weight": 0.0, "attacks": ["relearn"], "lr": 1.0e-4, "restart_every": 50, "batch": 2, "bits": 4},
    "sparsity_start": 2.0,
    "sparsity_end": 3.0,
    "sparsity_ramp_from": 0.5,
    "batch_targetkg": 5,
    "batch_controlkg": 6,
    "batch_controllm": 2,
    "log_every": 2,
    "checkpoint_every": 4,
    "device": "cpu",
    "dtype": "float32",
    "controlkg_known_only": True,
    "group_by_length": False,
    "targetkg_templates": "best",
    "select": {
        "every": 0,
        "min_sparsity": 0.0,
        "min_target_ratio": 1.0,
        "prefer": "least_damage",
        "max_controlkg_ratio": 1.1,
        "max_controllm_ratio": 1.05,
    },
}


def mask_config(**over):
    hard = over.pop("hard_concrete_hard", False)
    mapping = {**MASK, **over}
    mapping["hard_concrete"] = {**MASK["hard_concrete"], "hard": hard}
    return params_config.make(Mask, mapping)


def select_config(**over):
    return params_config.make(Select, {**TRAIN["select"], **over})


def config(**over):
    """A `train` section; batch_* and sparsity_* keys set the nested batch / sparsity_weight."""
    flat = {**TRAIN, **over}
    mapping = {k: v for k, v in flat.items() if not k.startswith(("batch_", "sparsity_"))}
    mapping["batch"] = {part: flat[f"batch_{part}"] for part in ("targetkg", "controlkg", "controllm")}
    mapping["sparsity_weight"] = {
        "start": flat["sparsity_start"],
        "end": flat["sparsity_end"],
        "ramp_from": flat["sparsity_ramp_from"],
    }
    mapping.setdefault("noise_scale", {"start": 1.0, "end": 1.0, "ramp_from": 0.5})
    if not isinstance(mapping["select"], dict):
        mapping["select"] = dataclasses.asdict(mapping["select"])
    return params_config.make(Train, mapping)


@pytest.mark.parametrize("build", [gpt2, llama])
@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_cached_prefix_logits_equal_full_forward(build, top_k):
    model = build()
    layers = masking.find_maskable_layers(model, top_k)
    top = TopBlocks(model, min(layer.block for layer in layers))
    fs = facts(8, 9, seed=3)
    with torch.no_grad():
        full = model(input_ids=fs.input_ids).logits
        cached = top.head(top.forward(top.prefix(fs.input_ids)))
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-5)
    # replaced weights for one call == masking the weights in place, and the model is left untouched
    gen = torch.Generator().manual_seed(0)
    masks = {layer.name: torch.rand(layer.weight.shape, generator=gen) > 0.5 for layer in layers}
    eff = {layer.name: layer.weight.detach().masked_fill(masks[layer.name], 0.0) for layer in layers}
    with torch.no_grad():
        got = top.head(top.forward(top.prefix(fs.input_ids), eff))
        with masking.masked_weights(layers, masks, "weight"):
            want = model(input_ids=fs.input_ids).logits
        again = model(input_ids=fs.input_ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(again, full, rtol=0, atol=0)


def run(tmp_path, name, callback=None, build=gpt2, **over):
    t, c, lm = data()
    return train_mask(
        build(),
        t,
        c,
        lm,
        mask_config(top_k_blocks=2),
        config(**over),
        seed=0,
        checkpoint_path=tmp_path / name / "checkpoint.pt",
        progress=False,
        callback=callback,
    )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("build", [gpt2, llama])
def test_killed_and_resumed_run_is_bit_identical(tmp_path, build, dtype):
    straight = run(tmp_path, "a", build=build, dtype=dtype)

    with pytest.raises(Killed):
        run(tmp_path, "b", callback=kill_at(6), build=build, dtype=dtype)  # checkpoint at step 4; 5-6 recomputed
    assert (tmp_path / "b" / "checkpoint.pt").is_file()
    resumed = run(tmp_path, "b", build=build, dtype=dtype)
    assert resumed.steps == straight.steps == 12
    assert resumed.log == straight.log and len(straight.log) == 6
    for name in straight.logits:
        assert torch.equal(resumed.logits[name], straight.logits[name])
    assert resumed.final_losses == straight.final_losses


def test_deterministic_and_seed_dependent(tmp_path):
    a, b = run(tmp_path, "a"), run(tmp_path, "b")
    assert a.log == b.log and all(torch.equal(a.logits[k], b.logits[k]) for k in a.logits)
    t, c, lm = data()
    other = train_mask(gpt2(), t, c, lm, mask_config(top_k_blocks=2), config(), seed=1, progress=False)
    assert other.log != a.log


class Killed(Exception):
    pass


def kill_at(at):
    def kill(trainer, step):
        if step == at:
            raise Killed

    return kill


def test_checkpoint_of_other_params_restarts_from_scratch(tmp_path, caplog):
    run(tmp_path, "a", steps=4)  # leaves its final checkpoint behind (the script deletes it)
    clean = run(tmp_path, "clean", steps=4, lr=0.1)
    with caplog.at_level("WARNING", logger="knowsubnet.core.checkpoint"):
        again = run(tmp_path, "a", steps=4, lr=0.1)
    assert [r.message for r in caplog.records if "starting from scratch" in r.message] == [
        f"{tmp_path / 'a' / 'checkpoint.pt'}: checkpoint was written for other inputs (changed: train); "
        "starting from scratch"
    ]
    assert again.log == clean.log and all(torch.equal(again.logits[k], clean.logits[k]) for k in clean.logits)


def test_checkpoint_of_another_thread_count_restarts_from_scratch(tmp_path, caplog):
    """A CPU run's bits depend on its thread count (the workflow runs one thread, a stage by hand torch's
    default): a checkpoint another count left behind is not resumed."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        run(tmp_path, "a", steps=4)  # leaves its final checkpoint behind
        torch.set_num_threads(1)
        with caplog.at_level("WARNING", logger="knowsubnet.core.checkpoint"):
            run(tmp_path, "a", steps=4)
    finally:
        torch.set_num_threads(threads)
    assert [r.message for r in caplog.records if "starting from scratch" in r.message] == [
        f"{tmp_path / 'a' / 'checkpoint.pt'}: checkpoint was written for other inputs (changed: compute); "
        "starting from scratch"
    ]


def changed_inputs(which):
    """The run's inputs with one of them changed in content only (same shapes and counts)."""
    t, c, lm = data()
    model = gpt2()
    if which == "model":
        with torch.no_grad():
            model.transformer.h[0].mlp.c_fc.weight[0, 0] += 1.0  # a block below the masked ones
    elif which == "targetkg":
        t.input_ids[0, 0] = t.input_ids[0, 0] % (VOCAB - 1) + 1
    elif which == "controlkg":
        c.targets = c.targets.clone()
        c.targets[c.targets != -100] = c.targets[c.targets != -100] % (VOCAB - 1) + 1
    elif which == "controllm":
        lm = lm.clone()
        lm[0, 0] = lm[0, 0] % (VOCAB - 1) + 1
    return model, t, c, lm


@pytest.mark.parametrize("which", ["model", "targetkg", "controlkg", "controllm"])
def test_killed_run_resumed_after_an_input_changed_equals_a_clean_run(tmp_path, caplog, which):
    with pytest.raises(Killed):
        run(tmp_path, "b", callback=kill_at(6))  # the old inputs; checkpoint at step 4
    assert (tmp_path / "b" / "checkpoint.pt").is_file()

    def new_run(name):
        model, t, c, lm = changed_inputs(which)
        return train_mask(
            model,
            t,
            c,
            lm,
            mask_config(top_k_blocks=2),
            config(),
            seed=0,
            checkpoint_path=tmp_path / name / "checkpoint.pt",
            progress=False,
        )

    clean = new_run("clean")
    with caplog.at_level("WARNING", logger="knowsubnet.core.checkpoint"):
        resumed = new_run("b")
    lines = [r.message for r in caplog.records if "starting from scratch" in r.message]
    assert len(lines) == 1 and f"changed: {'model_weights' if which == 'model' else which})" in lines[0]
    assert resumed.log == clean.log and resumed.final_losses == clean.final_losses
    for name in clean.logits:
        assert torch.equal(resumed.logits[name], clean.logits[name])


def test_checkpoint_loads_with_weights_only_and_unreadable_one_restarts(tmp_path, caplog):
    run(tmp_path, "a", steps=4)
    saved = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    assert saved["state"]["step"] == 4 and len(saved["fingerprint"]["model_weights"]) == 64
    (tmp_path / "a" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    clean = run(tmp_path, "clean", steps=4)
    with caplog.at_level("WARNING", logger="knowsubnet.core.checkpoint"):
        again = run(tmp_path, "a", steps=4)
    assert sum("unreadable checkpoint" in r.message for r in caplog.records) == 1
    assert again.log == clean.log


def memorised_gpt2(fs, steps=150):
    """A toy GPT-2 that has memorised `fs`'s tails (peaked tail distributions to suppress)."""
    model = gpt2(n_layer=3, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    model.train()
    for _ in range(steps):
        loss = F.cross_entropy(model(input_ids=fs.input_ids).logits.transpose(1, 2), fs.targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("sampler,hard", [("gumbel_sigmoid", True), ("hard_concrete", False), ("hard_concrete", True)])
def test_short_run_suppresses_target_and_sparsifies(sampler, hard):
    target, control = facts(10, 6, seed=10), facts(20, 6, seed=11)
    both = SimpleNamespace(
        input_ids=torch.cat([target.input_ids, control.input_ids]), targets=torch.cat([target.targets, control.targets])
    )
    model = memorised_gpt2(both)
    with torch.no_grad():
        logits = model(input_ids=target.input_ids).logits
        start = objectives.suppress_loss(objectives.tail_hidden(logits, target.targets)).item()
    assert start > 1.0  # the tails are memorised: far from uniform
    cfg = config(
        steps=80,
        batch_targetkg=10,
        batch_controlkg=10,
        batch_controllm=0,
        log_every=10,
        checkpoint_every=1000,
        lambda_controllm=0.0,
    )
    mask_cfg = mask_config(top_k_blocks=2, sampler=sampler, hard_concrete_hard=hard)
    result = train_mask(model, target, control, None, mask_cfg, cfg, seed=0, progress=False)
    final = result.final_losses
    assert final["suppress"] < 0.5 * start  # the deterministic remaining model forgot much of TargetKG
    assert final["sparsity_loss"] < 0.45  # expected density fell from its start (init_prob)
    assert 0.0 < final["density"] < 0.45  # a non-empty subnetwork (the deterministic mask starts empty)
    assert result.log[-1]["sparsity_loss"] < result.log[0]["sparsity_loss"]


def test_the_trainer_reads_the_typed_mask_and_train_sections():
    from conftest import base_params

    params = base_params(
        {
            "mask": {
                "granularity": "neuron_out",
                "top_k_blocks": 3,
                "sampler": "hard_concrete",
                "hard_concrete": {"beta": 0.5, "gamma": -0.2, "zeta": 1.2},
            },
            "train": {
                "steps": 10,
                "sparsity_weight": {"end": 4.0, "ramp_from": 0.25},
                "batch": {"controllm": 0},
                "dtype": "bfloat16",
            },
        }
    )
    mask, train = params.mask, params.train
    assert (mask.granularity, mask.top_k_blocks, mask.sampler, mask.hard_concrete.beta, mask.hard_concrete.zeta) == (
        "neuron_out",
        3,
        "hard_concrete",
        0.5,
        1.2,
    )
    assert mask.hard_concrete.hard is False  # from config/base.yaml
    assert (
        train.steps,
        train.sparsity_weight.end,
        train.sparsity_weight.ramp_from,
        train.batch.controllm,
        train.dtype,
    ) == (10, 4.0, 0.25, 0, "bfloat16")


@pytest.mark.parametrize("granularity", ["neuron_in", "neuron_out"])
def test_neuron_granularity_trains(granularity):
    t, c, lm = data()
    trainer = MaskTrainer(
        llama(), t, c, lm, mask_config(granularity=granularity, top_k_blocks=2), config(steps=3), seed=0, progress=False
    )
    result = trainer.train()
    assert all(v.dim() == 1 for v in result.logits.values())
    assert len(result.log) == 2


# -- validation and checkpoint selection -------------------------------------------------------


def test_select_checkpoint_prefers_least_control_damage_among_qualified():
    from knowsubnet.method.selection import select_checkpoint

    original = {"targetkg": 10.0, "controlkg": 20.0, "controllm": 50.0}
    rows = [  # step, sparsity, target, controlkg, controllm
        {
            "step": 50,
            "val_sparsity": 0.97,
            "val_targetkg_ppl": 500.0,
            "val_controlkg_ppl": 20.0,
            "val_controllm_ppl": 50.0,
        },
        {
            "step": 100,
            "val_sparsity": 0.99,
            "val_targetkg_ppl": 50.0,
            "val_controlkg_ppl": 20.0,
            "val_controllm_ppl": 50.0,
        },
        {
            "step": 150,
            "val_sparsity": 0.99,
            "val_targetkg_ppl": 400.0,
            "val_controlkg_ppl": 30.0,
            "val_controllm_ppl": 52.0,
        },
        {
            "step": 200,
            "val_sparsity": 0.99,
            "val_targetkg_ppl": 300.0,
            "val_controlkg_ppl": 22.0,
            "val_controllm_ppl": 51.0,
        },
    ]
    cfg = select_config(every=50, min_sparsity=0.98, min_target_ratio=10.0)
    # step 50 is not sparse enough, step 100 does not remove the target: 200 beats 150 on damage
    assert select_checkpoint(rows, original, cfg) == 3
    # nothing qualifies: the last validation
    assert select_checkpoint(rows, original, select_config(min_sparsity=0.999)) == 3
    assert select_checkpoint(rows[:3], original, select_config(min_sparsity=0.999)) == 2
    # no criterion: least damage overall, the later step on a tie
    assert select_checkpoint(rows, original, select_config()) == 1
    # damage counts both ways: ControlKG falling to x0.7 loses to rising to x1.1
    falling = dict(rows[2], step=250, val_controlkg_ppl=14.0, val_controllm_ppl=50.0)
    assert select_checkpoint([rows[3], falling], original, cfg) == 0


def test_select_checkpoint_most_removal_keeps_the_largest_removal_with_controls_held():
    from knowsubnet.method.selection import select_checkpoint

    original = {"targetkg": 10.0, "controlkg": 20.0, "controllm": 50.0}

    def row(step, target, controlkg, controllm=50.0):
        return {
            "step": step,
            "val_sparsity": 0.99,
            "val_targetkg_ppl": target,
            "val_controlkg_ppl": controlkg,
            "val_controllm_ppl": controllm,
        }

    # IsA seed 1 of the eighth screen in small: a x10^3 removal at little damage, then x10^30 at a
    # ControlKG still inside its bar, then more at ControlKG x1.2 (outside) and ControlLM x0.9 (outside)
    rows = [row(50, 1e4, 19.8), row(100, 1e31, 21.2), row(150, 1e35, 24.0), row(200, 1e36, 20.0, 45.0)]
    most = select_config(every=50, min_sparsity=0.98, min_target_ratio=10.0, prefer="most_removal")
    least = select_config(every=50, min_sparsity=0.98, min_target_ratio=10.0)
    assert select_checkpoint(rows, original, least) == 0
    assert select_checkpoint(rows, original, most) == 1
    # no checkpoint holds its controls: least damage, as least_damage would
    assert select_checkpoint(rows[2:], original, most) == select_checkpoint(rows[2:], original, least) == 1
    # the bars are the criterion's: a wider ControlKG bar lets step 150 in
    wide = select_config(
        every=50, min_sparsity=0.98, min_target_ratio=10.0, prefer="most_removal", max_controlkg_ratio=1.25
    )
    assert select_checkpoint(rows, original, wide) == 2


def test_validation_scores_match_evaluation_and_the_kept_mask_is_the_selected_one():
    from knowsubnet.method.selection import ValidationSets

    model = gpt2()
    target, control, blocks = data()
    val = ValidationSets(facts(5, 7, seed=7), facts(6, 9, seed=8), blocks[:2])
    trainer = MaskTrainer(
        model,
        target,
        control,
        blocks[2:],
        mask_config(top_k_blocks=2, init_prob=0.3),
        config(steps=8, select=select_config(every=2, min_sparsity=0.0, min_target_ratio=0.0)),
        seed=0,
        progress=False,
        validation=val,
    )
    # the original validation PPLs are the evaluation module's, computed the plain way
    fs = SimpleNamespace(input_ids=val.targetkg.input_ids, targets=val.targetkg.targets, uuids=list(range(5)))
    want = summarize_facts(score_facts(model, fs, 3, "cpu"))["ppl"]
    assert trainer.val_original["targetkg"] == pytest.approx(want, rel=1e-5)
    assert trainer.val_original["controllm"] == pytest.approx(lm_ppl(model, val.controllm, 2, "cpu"), rel=1e-5)
    result = trainer.train()
    steps = [row["step"] for row in trainer.val_rows]
    assert steps == [2, 4, 6, 8]
    chosen = result.selection["step"]
    index = steps.index(chosen)
    # the returned logits are the chosen validation's mask: re-validating them gives its scores
    trainer.mask.load_state_dict(result.logits)
    again = trainer.validation_ppls(trainer.mask.effective_weights(deterministic=True))
    assert again["controlkg"] == pytest.approx(trainer.val_rows[index]["val_controlkg_ppl"], rel=1e-6)
    logged = [row for row in result.log if row["val_targetkg_ppl"] is not None]
    assert [row["step"] for row in logged] == steps


def test_expression_loss_is_the_subnetwork_alone_cross_entropy():
    model = gpt2()
    target, control, blocks = data()
    trainer = MaskTrainer(
        model,
        target,
        control,
        blocks,
        mask_config(top_k_blocks=1, init_prob=0.5),
        config(lambda_expression=1.0),
        seed=0,
        progress=False,
    )
    row = trainer.step()
    assert row["expression"] > 0
    plain = MaskTrainer(
        gpt2(), target, control, blocks, mask_config(top_k_blocks=1, init_prob=0.5), config(), seed=0, progress=False
    ).step()
    assert plain["expression"] == 0.0
    # same draw, same other losses: only the total differs, by the expression term
    assert row["suppress"] == plain["suppress"] and row["loss"] == pytest.approx(plain["loss"] + row["expression"])


@pytest.mark.parametrize("build", [gpt2, llama])
def test_hidden_loss_reads_the_masked_blocks_contribution_at_prompt_positions(build):
    """The cached original contribution equals a full forward's hidden states (block 2 of 4, the lower of
    the two masked: below the final norm) minus those entering the first masked block, at the prompt
    positions; the loss is the mean cos^2 of the step's contribution against it, added with its weight."""
    target, control, blocks = data()

    def make(**over):
        return MaskTrainer(
            build(), target, control, blocks, mask_config(init_prob=0.5), config(**over), seed=0, progress=False
        )

    trainer = make(lambda_hidden=2.0, hidden_layer=2)
    assert trainer.hidden_block == 2
    with torch.no_grad():
        states = trainer.model(input_ids=target.input_ids, output_hidden_states=True).hidden_states
    prompt = objectives.prompt_positions(target.targets)
    expected = (states[3] - states[2])[prompt]
    assert torch.allclose(trainer.t_contribution, expected, atol=1e-5)
    # the original weights give cos = 1 at every position
    idx = torch.tensor([3, 0, 7])
    rows = torch.cat([torch.nonzero(prompt[i])[:, 0] + int(prompt[:i].sum()) for i in idx.tolist()])
    assert torch.allclose(trainer._masked_contribution(None, idx), expected[rows], atol=1e-5)

    row = trainer.step()
    plain = make().step()
    assert 0.0 < row["hidden"] < 1.0 and plain["hidden"] == 0.0
    assert row["suppress"] == plain["suppress"]
    assert row["loss"] == pytest.approx(plain["loss"] + 2.0 * row["hidden"])


def test_npo_suppression_reads_the_original_tail_log_probs_and_takes_suppress_place():
    """suppress_objective npo: the cached reference is the original's log p(tail token) at every tail position,
    a step's suppress part is NPO's loss there ((2 / beta) log 2 before the mask moves), and the rest of
    the objective is the uniform run's."""
    target, control, blocks = data()

    def make(**over):
        return MaskTrainer(
            gpt2(), target, control, blocks, mask_config(init_prob=0.5), config(**over), seed=0, progress=False
        )

    trainer = make(suppress_objective="npo", npo_beta=0.5)
    with torch.no_grad():
        logits = trainer.model(input_ids=target.input_ids).logits
    tail = target.targets != -100
    expected = torch.log_softmax(logits[tail], dim=-1).gather(-1, target.targets[tail][:, None])[:, 0]
    assert torch.allclose(trainer.tails.token_logprob, expected, atol=1e-5)
    idx = torch.tensor([3, 0])
    (original,) = trainer._kg_tail_logits(None, [("target", idx)])
    assert trainer._suppress(original, idx).item() == pytest.approx(2 / 0.5 * math.log(2), rel=1e-5)
    row, plain = trainer.step(), make().step()
    assert row["suppress"] != plain["suppress"] and row["controlkg"] == plain["controlkg"]


def test_other_tails_loss_reads_the_original_beside_the_tail_and_adds_to_the_objective():
    """lambda_other_tails: the cached reference is the original's distribution over every token but the tail
    at each TargetKG tail position; a step's other_tails part is zero before the mask moves (init_prob 0.5
    draws a mask, so it is not) and enters the loss with its weight; uniform suppression still works."""
    target, control, blocks = data()

    def make(**over):
        return MaskTrainer(
            gpt2(), target, control, blocks, mask_config(init_prob=0.5), config(**over), seed=0, progress=False
        )

    trainer, plain = make(lambda_other_tails=2.0), make()
    assert plain.tails.other_tails is None and trainer.tails.other_tails is not None
    with torch.no_grad():
        logits = trainer.model(input_ids=target.input_ids).logits
    tail = target.targets != -100
    expected = objectives.other_tails_logprobs(logits[tail], target.targets[tail])
    assert torch.allclose(trainer.tails.other_tails, expected, atol=1e-5)
    idx = torch.tensor([3, 0])
    (original,) = trainer._kg_tail_logits(None, [("target", idx)])
    assert trainer.tails.other_tails_loss(original, idx).item() == pytest.approx(0.0, abs=1e-5)
    row, plain_row = trainer.step(), plain.step()
    assert plain_row["other_tails"] == 0.0 and row["other_tails"] > 0.0
    assert row["suppress"] == plain_row["suppress"]
    assert row["loss"] == pytest.approx(plain_row["loss"] + 2.0 * row["other_tails"])


def test_hidden_layer_above_the_masked_blocks_is_one_line_naming_the_key():
    target, control, blocks = data()
    with pytest.raises(InputError, match=r"'train.hidden_layer': 3 counts from the top of the masked blocks"):
        MaskTrainer(gpt2(), target, control, blocks, mask_config(), config(lambda_hidden=1.0, hidden_layer=3), seed=0)


def test_length_groups_cover_every_row_once_with_the_fewest_padded_positions():
    lengths = torch.tensor([7, 3, 3, 12, 4, 7, 3, 5, 12, 4])
    groups = length_groups(lengths, overhead=4)
    assert sorted(torch.cat(groups).tolist()) == list(range(len(lengths)))
    spans = [(int(lengths[g].min()), int(lengths[g].max())) for g in groups]
    assert all(hi < lo for (_, hi), (lo, _) in zip(spans, spans[1:]))  # contiguous runs of sorted lengths
    padded = sum(len(g) * int(lengths[g].max()) + 4 for g in groups)
    assert padded < len(lengths) * 12 + 4  # beats one forward padded to the longest
    assert len(length_groups(lengths, overhead=10_000)) == 1  # a costly forward: one group


@pytest.mark.parametrize("build", [gpt2, llama])
def test_grouping_facts_by_length_changes_only_rounding(build, monkeypatch):
    from knowsubnet.method import training

    sizes = []

    def every_length_apart(lengths):  # toy facts are too short for the default overhead to split them
        groups = length_groups(lengths, overhead=0)
        sizes.append(len(groups))
        return groups

    monkeypatch.setattr(training, "length_groups", every_length_apart)
    target, control, lm = data()
    rows = {}
    for grouped in (False, True):
        trainer = MaskTrainer(
            build(), target, control, lm, mask_config(), config(group_by_length=grouped), seed=3, progress=False
        )
        rows[grouped] = [trainer.step() for _ in range(3)]
    for plain, grouped in zip(rows[False], rows[True]):
        for key in ("loss", "suppress", "controlkg", "controllm"):
            assert grouped[key] == pytest.approx(plain[key], rel=1e-5, abs=1e-6)
    assert max(sizes) > 1
