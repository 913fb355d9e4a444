"""The stages discover_mask, export_remaining and the ablation stages (evaluate_ablation, combine_seeds)
end to end on a toy model directory (seconds, CPU)."""

import json

import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO_ROOT, run_stage, save_tiny_gpt2

from knowsubnet.data import encoding
from knowsubnet.method import masking

REPO = REPO_ROOT


def run_script(name, argv):
    assert run_stage(name, argv) == 0


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from knowsubnet.models.tiny import train_tokenizer

    root = tmp_path_factory.mktemp("discover")
    facts = [
        (f"f{i}", head, rel, tail)
        for i, (head, rel, tail) in enumerate(
            [
                ("apple", "IsA", "fruit"),
                ("dog", "IsA", "animal"),
                ("oak", "IsA", "tree"),
                ("rose", "IsA", "flower"),
                ("knife", "UsedFor", "cutting"),
                ("bed", "UsedFor", "sleeping"),
                ("pen", "UsedFor", "writing"),
                ("fish", "AtLocation", "water"),
                ("book", "AtLocation", "library"),
                ("car", "AtLocation", "garage"),
            ]
        )
    ]
    frame = pd.DataFrame(facts, columns=["uuid", "head", "rel", "tail"]).assign(source="builtin")
    prompts = {"IsA": "{} is a kind of", "UsedFor": "You use a {} for", "AtLocation": "You find a {} in the"}
    verbalized = frame.assign(
        template_id=0,
        prompt=[prompts[r].format(h) for h, r in zip(frame["head"], frame["rel"])],
        tail_text=" " + frame["tail"],
        tail_ppl=1.0,
    )
    verbalized.to_parquet(root / "verbalized.parquet", index=False)
    splits = root / "splits"
    splits.mkdir()
    frame[frame["rel"] == "IsA"].to_parquet(splits / "targetkg_train.parquet", index=False)
    frame[frame["rel"] != "IsA"].to_parquet(splits / "controlkg_train.parquet", index=False)
    frame[frame["rel"] == "IsA"].to_parquet(splits / "targetkg_val.parquet", index=False)
    frame[frame["rel"] == "UsedFor"].to_parquet(splits / "controlkg_val.parquet", index=False)

    text = " ".join(verbalized["prompt"] + verbalized["tail_text"]) + " the a of in for is kind you use find"
    tokenizer = train_tokenizer([text] * 5, vocab_size=300, model_max_length=64)
    save_tiny_gpt2(tokenizer, root / "model")
    blocks = encoding.controllm_blocks(tokenizer, text * 4, block_size=16)
    encoding.save_blocks(root / "controllm" / "train.safetensors", blocks[:-2])
    encoding.save_blocks(root / "controllm" / "val.safetensors", blocks[-2:])

    override = {
        "mask": {"top_k_blocks": 1},
        "train": {
            "steps": 6,
            "log_every": 2,
            "checkpoint_every": 3,
            "device": "cpu",
            "batch": {"targetkg": 3, "controlkg": 4, "controllm": 2},
            "select": {
                "every": 3,
                "min_sparsity": 0.0,
                "min_target_ratio": 0.0,
                "prefer": "least_damage",
                "max_controlkg_ratio": 1.1,
                "max_controllm_ratio": 1.05,
            },
        },
    }
    (root / "override.yaml").write_text(yaml.safe_dump(override))
    return root


def test_discover_then_export(workspace):
    root = workspace
    out = root / "masks" / "seed0"
    run_script(
        "discover_mask",
        [
            "--params",
            str(REPO / "params.yaml"),
            str(root / "override.yaml"),
            "--model",
            "toy",
            "--target",
            "IsA",
            "--seed",
            "0",
            "--model-dir",
            str(root / "model"),
            "--verbalized",
            str(root / "verbalized.parquet"),
            "--splits",
            str(root / "splits"),
            "--controllm",
            str(root / "controllm"),
            "--out-dir",
            str(out),
            "--no-progress",
        ],
    )
    assert sorted(p.name for p in out.iterdir()) == ["mask.safetensors", "meta.json", "metrics.json", "train_log.csv"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["steps"] == 6 and meta["target"] == "IsA" and meta["seed"] == 0
    assert set(meta["sparsity"]) == {"masked_layers", "all_weights"}
    assert meta["provenance"]["params"]["train"]["steps"] == 6
    log = pd.read_csv(out / "train_log.csv")
    assert list(log.columns) == [
        "step",
        "loss",
        "suppress",
        "controlkg",
        "controllm",
        "expression",
        "hidden",
        "suppress_attacked",
        "other_tails",
        "sparsity_loss",
        "sparsity_weight",
        "noise_scale",
        "lr",
        "density",
        "val_sparsity",
        "val_targetkg_ppl",
        "val_controlkg_ppl",
        "val_controllm_ppl",
        "val_random_targetkg_ppl",
        "val_random_controlkg_ppl",
        "val_random_controllm_ppl",
    ]
    assert log["step"].tolist() == [2, 3, 4, 6]  # logged every 2 steps and at every validation
    validated = log.dropna(subset=["val_targetkg_ppl"])
    assert validated["step"].tolist() == [3, 6]
    selection = meta["selection"]
    assert selection["step"] in (3, 6) and selection["qualified"]
    assert set(selection["original"]) == {"targetkg", "controlkg", "controllm"}
    logits, metadata = masking.load_mask(out / "mask.safetensors")
    assert metadata["granularity"] == "weight" and metadata["top_k_blocks"] == "1"
    assert all(name.startswith("transformer.h.1.") for name in logits)

    from transformers import AutoModelForCausalLM

    # force a non-empty subnetwork so that the export visibly removes something
    logits = {
        name: torch.where(torch.arange(v.numel()).view(v.shape) % 3 == 0, 1.0, -1.0) for name, v in logits.items()
    }
    masking.save_mask(root / "forced.safetensors", logits, metadata)
    run_script(
        "export_remaining",
        [
            "--params",
            str(REPO / "params.yaml"),
            "--model-dir",
            str(root / "model"),
            "--mask",
            str(root / "forced.safetensors"),
            "--out",
            str(root / "remaining"),
        ],
    )
    original = AutoModelForCausalLM.from_pretrained(root / "model")
    remaining = AutoModelForCausalLM.from_pretrained(root / "remaining")
    layers = masking.find_maskable_layers(original, 1)
    binary = masking.binary_masks(logits)
    with masking.masked_weights(layers, binary, "weight"):
        expected = {k: v.clone() for k, v in original.state_dict().items()}
    for key, value in remaining.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert json.loads((root / "remaining" / "provenance.json").read_text())["keep"] == "remaining"


def test_stale_checkpoint_of_other_model_weights_is_not_resumed(workspace, tmp_path, monkeypatch):
    """A run killed before its outputs were written, re-run after the model changed (same shapes,
    same facts, same params), ends with exactly the mask of a clean run on the new model."""
    import shutil

    from transformers import AutoModelForCausalLM

    from knowsubnet.method import training

    root = workspace
    model_dir = tmp_path / "model"
    shutil.copytree(root / "model", model_dir)

    def discover(out):
        run_script(
            "discover_mask",
            [
                "--params",
                str(REPO / "params.yaml"),
                str(root / "override.yaml"),
                "--model",
                "toy",
                "--target",
                "IsA",
                "--seed",
                "0",
                "--model-dir",
                str(model_dir),
                "--verbalized",
                str(root / "verbalized.parquet"),
                "--splits",
                str(root / "splits"),
                "--controllm",
                str(root / "controllm"),
                "--out-dir",
                str(out),
                "--no-progress",
            ],
        )

    with monkeypatch.context() as m:  # "killed" after training: the checkpoint stays behind
        m.setattr(training.MaskTrainer, "discard_checkpoint", lambda self: None)
        discover(tmp_path / "stale")
    assert (tmp_path / "stale" / "checkpoint.pt").is_file()
    for name in ("mask.safetensors", "meta.json", "metrics.json", "train_log.csv"):
        (tmp_path / "stale" / name).unlink()

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(0.9)  # new weights, same shapes
    model.save_pretrained(model_dir)

    discover(tmp_path / "clean")
    discover(tmp_path / "stale")  # finds the old checkpoint, must not resume it
    clean, _ = masking.load_mask(tmp_path / "clean" / "mask.safetensors")
    rerun, _ = masking.load_mask(tmp_path / "stale" / "mask.safetensors")
    assert clean.keys() == rerun.keys() and all(torch.equal(clean[k], rerun[k]) for k in clean)
    assert not (tmp_path / "stale" / "checkpoint.pt").exists()


def test_evaluate_ablation_and_combine_seeds_stages(workspace, tmp_path, capsys):
    """evaluate_mask writes what evaluate_ablation computes on the test splits, with provenance and
    headline; combine_seeds (through its script) writes each combination's mask and metrics."""
    import dataclasses
    import shutil

    from conftest import base_params

    from knowsubnet.evaluation import ablation
    from knowsubnet.models.prepare import load_model

    root = workspace
    splits, controllm = tmp_path / "splits", tmp_path / "controllm"
    shutil.copytree(root / "splits", splits)
    shutil.copytree(root / "controllm", controllm)
    facts = pd.read_parquet(root / "verbalized.parquet")[["uuid", "head", "rel", "tail", "source"]]
    facts[facts["rel"] == "IsA"].to_parquet(splits / "targetkg_test.parquet", index=False)
    facts[facts["rel"] != "IsA"].to_parquet(splits / "controlkg_test.parquet", index=False)
    encoding.save_blocks(controllm / "test.safetensors", encoding.load_blocks(controllm / "train.safetensors")[:3])
    lm, tokenizer = load_model(root / "model")
    layers = masking.find_maskable_layers(lm, 1)
    paths = []
    for seed in (2, 0, 1):
        generator = torch.Generator().manual_seed(seed)
        logits = {layer.name: torch.randn(layer.mask_shape("weight"), generator=generator) - 1.0 for layer in layers}
        paths.append(tmp_path / f"seed{seed}.safetensors")
        masking.save_mask(
            paths[-1],
            logits,
            {"granularity": "weight", "top_k_blocks": 1, "seed": seed, "model": "toy", "target": "IsA"},
        )
    params_files = [str(REPO / "params.yaml"), str(tmp_path / "eval.yaml")]
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump({"eval": {"device": "cpu", "random_draws": 2, "batch_size": 4}}))
    params = base_params({"eval": {"device": "cpu", "random_draws": 2, "batch_size": 4}})
    inputs = dict(
        model_dir=root / "model", verbalized=root / "verbalized.parquet", splits_dir=splits, controllm_dir=controllm
    )

    result = ablation.evaluate_mask(
        params,
        model="toy",
        target="IsA",
        seed=0,
        mask=paths[1],
        out=tmp_path / "eval" / "metrics.json",
        headline_out=tmp_path / "headline.json",
        **inputs,
    )
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == json.loads(json.dumps(result))
    bars = dataclasses.asdict(params.report.bars)
    assert json.loads((tmp_path / "headline.json").read_text()) == ablation.headline(result, bars).to_dict()
    assert result["counts_before_known_filter"] == {"targetkg": 4, "controlkg": 6}
    assert result["mask"] == str(paths[1]) and result["provenance"]["params"]["eval"]["random_draws"] == 2
    targetkg, controlkg, blocks = ablation.load_test_sets(
        tokenizer, root / "verbalized.parquet", splits, controllm, scored_positions=params.verbalize.scored_positions
    )
    logits, _ = masking.load_mask(paths[1])
    direct = ablation.evaluate_ablation(
        lm,
        layers,
        logits,
        "weight",
        targetkg,
        controlkg,
        blocks,
        random_draws=2,
        seed=0,
        batch_size=4,
        device="cpu",
        model_name="toy",
        target="IsA",
        controlkg_relations=facts.set_index("uuid").loc[controlkg.uuids, "rel"].tolist(),
        controllm_ppl=params.eval.controllm_ppl,
    )
    assert result["delta_ppl"] == direct["delta_ppl"]  # same model, inputs and seed: the same numbers
    assert result["counts"] == direct["counts"]

    argv = [
        "--params",
        *params_files,
        "--model",
        "toy",
        "--target",
        "IsA",
        "--masks",
        *map(str, paths),
        "--model-dir",
        str(root / "model"),
        "--verbalized",
        str(root / "verbalized.parquet"),
        "--splits",
        str(splits),
        "--controllm",
        str(controllm),
        "--out-masks",
        str(tmp_path / "combined"),
        "--out-eval",
        str(tmp_path / "combined_eval"),
        "--combinations",
        "union",
        "majority",
    ]
    run_script("combine_seeds", argv)
    assert sorted(p.name for p in (tmp_path / "combined").iterdir()) == ["majority.safetensors", "union.safetensors"]
    union = json.loads((tmp_path / "combined_eval" / "union.json").read_text())
    assert union["seed"] is None and union["seeds"] == [0, 1, 2] and union["combination"] == "union"
    assert union["provenance"]["source_masks"] == [str(p) for p in paths]
    combined, metadata = masking.load_mask(tmp_path / "combined" / "union.safetensors")
    assert metadata["seeds"] == "0,1,2" and "seed" not in metadata
    seeds = [masking.load_mask(p)[0] for p in paths]
    for name, value in combined.items():
        assert torch.equal(value > 0, torch.stack([s[name] > 0 for s in seeds]).any(dim=0)), name

    # masks of different granularities: exit 2 and one line naming the files
    neuron = tmp_path / "neuron.safetensors"
    masking.save_mask(
        neuron,
        {layer.name: torch.ones(layer.mask_shape("neuron_in")) for layer in layers},
        {"granularity": "neuron_in", "top_k_blocks": 1, "seed": 3},
    )
    bad = argv[: argv.index("--masks") + 1] + [str(paths[0]), str(neuron)] + argv[argv.index("--model-dir") :]
    capsys.readouterr()
    assert run_stage("combine_seeds", bad) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "masks of different granularities" in err and str(neuron) in err
