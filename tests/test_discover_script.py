"""discover_mask.py and export_remaining.py end to end on a toy model directory (seconds, CPU)."""

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from knowsubnet.data import encoding
from knowsubnet.method import masking

REPO = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "workflow" / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name, argv):
    with pytest.raises(SystemExit) as exit_info:
        load_script(name).main(argv)
    assert exit_info.value.code == 0


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    from knowsubnet.models.tiny import train_tokenizer

    root = tmp_path_factory.mktemp("discover")
    facts = [(f"f{i}", head, rel, tail) for i, (head, rel, tail) in enumerate([
        ("apple", "IsA", "fruit"), ("dog", "IsA", "animal"), ("oak", "IsA", "tree"), ("rose", "IsA", "flower"),
        ("knife", "UsedFor", "cutting"), ("bed", "UsedFor", "sleeping"), ("pen", "UsedFor", "writing"),
        ("fish", "AtLocation", "water"), ("book", "AtLocation", "library"), ("car", "AtLocation", "garage")])]
    frame = pd.DataFrame(facts, columns=["uuid", "head", "rel", "tail"]).assign(source="builtin")
    prompts = {"IsA": "{} is a kind of", "UsedFor": "You use a {} for", "AtLocation": "You find a {} in the"}
    verbalized = frame.assign(template_id=0, prompt=[prompts[r].format(h) for h, r in zip(frame["head"], frame["rel"])],
                              tail_text=" " + frame["tail"], tail_ppl=1.0)
    verbalized.to_parquet(root / "verbalized.parquet", index=False)
    splits = root / "splits"
    splits.mkdir()
    frame[frame["rel"] == "IsA"].to_parquet(splits / "targetkg_train.parquet", index=False)
    frame[frame["rel"] != "IsA"].to_parquet(splits / "controlkg_train.parquet", index=False)
    frame[frame["rel"] == "IsA"].to_parquet(splits / "targetkg_val.parquet", index=False)
    frame[frame["rel"] == "UsedFor"].to_parquet(splits / "controlkg_val.parquet", index=False)

    text = " ".join(verbalized["prompt"] + verbalized["tail_text"]) + " the a of in for is kind you use find"
    tokenizer = train_tokenizer([text] * 5, vocab_size=300, model_max_length=64)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tokenizer), n_positions=64,
                                       bos_token_id=0, eos_token_id=0, pad_token_id=0))
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    blocks = encoding.controllm_blocks(tokenizer, text * 4, block_size=16)
    encoding.save_blocks(root / "controllm" / "train.safetensors", blocks[:-2])
    encoding.save_blocks(root / "controllm" / "val.safetensors", blocks[-2:])

    override = {"mask": {"top_k_blocks": 1},
                "train": {"steps": 6, "log_every": 2, "checkpoint_every": 3, "device": "cpu",
                          "batch": {"targetkg": 3, "controlkg": 4, "controllm": 2},
                          "select": {"every": 3, "min_sparsity": 0.0, "min_target_ratio": 0.0}}}
    (root / "override.yaml").write_text(yaml.safe_dump(override))
    return root


def test_discover_then_export(workspace):
    root = workspace
    out = root / "masks" / "seed0"
    run_script("discover_mask", [
        "--params", str(REPO / "params.yaml"), str(root / "override.yaml"), "--model", "toy", "--target", "IsA",
        "--seed", "0", "--model-dir", str(root / "model"), "--verbalized", str(root / "verbalized.parquet"),
        "--splits", str(root / "splits"), "--controllm", str(root / "controllm"), "--out-dir", str(out),
        "--no-progress"])
    assert sorted(p.name for p in out.iterdir()) == ["mask.safetensors", "meta.json", "metrics.json", "train_log.csv"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["steps"] == 6 and meta["target"] == "IsA" and meta["seed"] == 0
    assert set(meta["sparsity"]) == {"masked_layers", "all_weights"}
    assert meta["provenance"]["params"]["train"]["steps"] == 6
    log = pd.read_csv(out / "train_log.csv")
    assert list(log.columns) == ["step", "loss", "suppress", "controlkg", "controllm", "expression", "sparsity_loss",
                                 "sparsity_weight", "noise_scale", "lr", "density", "val_sparsity", "val_targetkg_ppl",
                                 "val_controlkg_ppl", "val_controllm_ppl", "val_random_targetkg_ppl",
                                 "val_random_controlkg_ppl", "val_random_controllm_ppl"]
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
    logits = {name: torch.where(torch.arange(v.numel()).view(v.shape) % 3 == 0, 1.0, -1.0) for name, v in logits.items()}
    masking.save_mask(root / "forced.safetensors", logits, metadata)
    run_script("export_remaining", ["--model-dir", str(root / "model"), "--mask", str(root / "forced.safetensors"),
                                    "--out", str(root / "remaining")])
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
        run_script("discover_mask", [
            "--params", str(REPO / "params.yaml"), str(root / "override.yaml"), "--model", "toy", "--target",
            "IsA", "--seed", "0", "--model-dir", str(model_dir), "--verbalized", str(root / "verbalized.parquet"),
            "--splits", str(root / "splits"), "--controllm", str(root / "controllm"), "--out-dir", str(out),
            "--no-progress"])

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
