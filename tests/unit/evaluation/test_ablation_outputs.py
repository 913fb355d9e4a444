"""What evaluate_ablation writes beside metrics.json: the per-fact scores (facts.parquet) and the
headline with its verdict against the bars (headline.json), on a tiny GPT-2 (seconds, CPU)."""

from __future__ import annotations

import dataclasses
import json
import math

import pandas as pd
import pytest
import torch
from conftest import base_params, metrics, save_tiny_gpt2

from knowsubnet.data import encoding
from knowsubnet.evaluation import ablation
from knowsubnet.evaluation.bars import BARS, check_bars
from knowsubnet.method import masking
from knowsubnet.models.prepare import load_model
from knowsubnet.scoring.facts import score_facts

pytestmark = pytest.mark.usefixtures("one_thread")

FACTS = [
    ("t0", "apple", "IsA", "fruit"),
    ("t1", "dog", "IsA", "animal"),
    ("t2", "oak", "IsA", "tree"),
    ("t3", "rose", "IsA", "flower"),
    ("c0", "knife", "UsedFor", "cutting"),
    ("c1", "bed", "UsedFor", "sleeping"),
    ("c2", "pen", "UsedFor", "writing"),
    ("c3", "fish", "AtLocation", "water"),
    ("c4", "book", "AtLocation", "library"),
    ("c5", "car", "AtLocation", "garage"),
]
PROMPTS = {"IsA": "{} is a kind of", "UsedFor": "You use a {} for", "AtLocation": "You find a {} in the"}
# the known filter (known.max_tail_ppl: 100) drops t1, c2 and c4
TAIL_PPL = {"t1": 500.0, "c2": 300.0, "c4": 1000.0}
PARAMS = {"eval": {"device": "cpu", "random_draws": 2, "batch_size": 3}, "known": {"max_tail_ppl": 100.0}}


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """A prepared toy model, its verbalisations, test splits (rows not in uuid order), ControlLM test
    blocks and a mask with a non-empty subnetwork in the top block; and evaluate_mask's outputs."""
    from knowsubnet.models.tiny import train_tokenizer

    root = tmp_path_factory.mktemp("ablation_outputs")
    frame = pd.DataFrame(FACTS, columns=["uuid", "head", "rel", "tail"]).assign(source="builtin")
    verbalized = frame.assign(
        template_id=0,
        prompt=[PROMPTS[r].format(h) for h, r in zip(frame["head"], frame["rel"])],
        tail_text=" " + frame["tail"],
        tail_ppl=[TAIL_PPL.get(u, 2.0) for u in frame["uuid"]],
    )
    verbalized.to_parquet(root / "verbalized.parquet", index=False)
    splits = root / "splits"
    splits.mkdir()
    frame[frame["rel"] == "IsA"].iloc[::-1].to_parquet(splits / "targetkg_test.parquet", index=False)
    frame[frame["rel"] != "IsA"].to_parquet(splits / "controlkg_test.parquet", index=False)

    text = " ".join(verbalized["prompt"] + verbalized["tail_text"]) + " the a of in for is kind you use find"
    tokenizer = train_tokenizer([text] * 5, vocab_size=300, model_max_length=64)
    model = save_tiny_gpt2(tokenizer, root / "model")
    encoding.save_blocks(
        root / "controllm" / "test.safetensors", encoding.controllm_blocks(tokenizer, text * 4, block_size=16)[:3]
    )
    layers = masking.find_maskable_layers(model, 1)
    generator = torch.Generator().manual_seed(0)
    logits = {layer.name: torch.randn(layer.mask_shape("weight"), generator=generator) - 1.0 for layer in layers}
    masking.save_mask(root / "mask.safetensors", logits, {"granularity": "weight", "top_k_blocks": 1, "seed": 0})

    params = base_params(PARAMS)
    inputs = dict(
        model="toy",
        target="IsA",
        seed=3,
        model_dir=root / "model",
        verbalized=root / "verbalized.parquet",
        splits_dir=splits,
        controllm_dir=root / "controllm",
        mask=root / "mask.safetensors",
    )
    result = ablation.evaluate_mask(
        params,
        out=root / "eval" / "metrics.json",
        headline_out=root / "eval" / "headline.json",
        facts_out=root / "eval" / "facts.parquet",
        **inputs,
    )
    return root, params, inputs, result


def test_metrics_and_headline_files_read_and_write_back_to_the_same_bytes(stage, tmp_path):
    """Written through AblationMetrics / Headline: the bytes write_json gave the result dict before
    the types, and a file read and written back is the same file."""
    from knowsubnet.core.io import canonical_json
    from knowsubnet.evaluation.ablation_results import AblationMetrics, Headline

    root, params, _, result = stage
    metrics_file, headline_file = root / "eval" / "metrics.json", root / "eval" / "headline.json"
    assert metrics_file.read_text() == canonical_json(result)
    for kind, path in ((AblationMetrics, metrics_file), (Headline, headline_file)):
        typed = kind.read(path)
        typed.write(tmp_path / path.name)
        assert (tmp_path / path.name).read_bytes() == path.read_bytes()
        assert kind.read(tmp_path / path.name) == typed
    metrics = AblationMetrics.read(metrics_file)
    assert metrics.removed.targetkg.ppl == result["removed"]["targetkg"]["ppl"]
    assert metrics.delta_ppl["random"].controllm == result["delta_ppl"]["random"]["controllm"]
    bars = dataclasses.asdict(params.report.bars)
    assert Headline.read(headline_file).verdict == ablation.headline(result, bars).verdict


def test_facts_parquet_has_one_row_per_test_fact_with_the_scores_behind_the_metrics(stage):
    root, _, _, result = stage
    facts = pd.read_parquet(root / "eval" / "facts.parquet")
    assert list(facts.columns) == [
        "set",
        "uuid",
        "head",
        "rel",
        "tail",
        "template_id",
        "prompt",
        "tail_text",
        "known",
        "nll_original",
        "rank_original",
        "correct_original",
        "nll_removed",
        "rank_removed",
        "correct_removed",
        "nll_random_draw0",
        "rank_random_draw0",
        "correct_random_draw0",
    ]
    # every fact of both test splits, known or not, TargetKG first, each in its split's order
    assert facts["uuid"].tolist() == ["t3", "t2", "t1", "t0", "c0", "c1", "c2", "c3", "c4", "c5"]
    assert facts["set"].tolist() == ["targetkg"] * 4 + ["controlkg"] * 6
    assert facts.loc[facts["uuid"] == "t0", ["head", "rel", "tail", "prompt", "tail_text"]].values.tolist() == [
        ["apple", "IsA", "fruit", "apple is a kind of", " fruit"]
    ]
    assert facts.set_index("uuid")["known"].to_dict() == {u: u not in TAIL_PPL for u in facts["uuid"]}
    assert result["counts"]["targetkg"] == 3 and result["counts"]["controlkg"] == 4

    # the original model's own per-fact NLL and rank, scored here on every fact (known or not)
    lm, tokenizer = load_model(root / "model")
    for set_name, group in facts.groupby("set", sort=False):
        encoded = encoding.encode_facts(
            tokenizer,
            group["prompt"].tolist(),
            group["tail_text"].tolist(),
            group["uuid"].tolist(),
            scored_positions="all_tail_tokens",
        )
        own = score_facts(lm, encoded, 2, "cpu", progress=False)
        assert group["nll_original"].tolist() == pytest.approx(own["nll"].tolist(), rel=1e-5), set_name
        assert group["rank_original"].tolist() == own["rank"].tolist(), set_name

    # a non-empty subnetwork removed changes every fact's score
    assert (facts["nll_removed"] != facts["nll_original"]).all()
    assert (facts["nll_random_draw0"] != facts["nll_original"]).all()

    # the known rows are exactly what the metrics summarise (random: the first draw)
    known = facts[facts["known"]]
    for set_name in ("targetkg", "controlkg"):
        rows = known[known["set"] == set_name]
        for column, variant in (
            ("original", result["original"]),
            ("removed", result["removed"]),
            ("random_draw0", result["random_draws"][0]),
        ):
            assert math.exp(rows[f"nll_{column}"].mean()) == pytest.approx(variant[set_name]["ppl"], rel=1e-9)
            assert rows[f"rank_{column}"].mean() == pytest.approx(variant[set_name]["rank"])
            assert rows[f"correct_{column}"].mean() == pytest.approx(variant[set_name]["acc"])


def test_facts_parquet_is_reproducible_and_leaves_the_metrics_unchanged(stage, tmp_path):
    root, params, inputs, result = stage
    # without --facts the unknown facts are not scored; the metrics are the same numbers
    again = ablation.evaluate_mask(params, out=tmp_path / "metrics.json", **inputs)
    for key in ("original", "removed", "random", "kept", "random_draws", "delta_ppl", "counts"):
        assert again[key] == result[key], key
    ablation.evaluate_mask(params, out=tmp_path / "metrics2.json", facts_out=tmp_path / "facts.parquet", **inputs)
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "facts.parquet"), pd.read_parquet(root / "eval" / "facts.parquet")
    )


def test_headline_has_the_ratios_and_the_verdict_against_the_bars(stage):
    root, params, _, result = stage
    bars = dataclasses.asdict(params.report.bars)
    written = json.loads((root / "eval" / "headline.json").read_text())
    for set_name in ("targetkg", "controlkg", "controllm"):
        for variant in ("removed", "random"):
            expected = result[variant][set_name]["ppl"] / result["original"][set_name]["ppl"]
            assert written[f"ratio_{variant}_{set_name}"] == pytest.approx(expected, abs=1e-4)
    assert {f"met_{bar}" for bar in BARS} <= set(written) and "random_share" in written
    assert all(isinstance(written[f"met_{bar}"], bool) for bar in BARS)
    # a subnetwork of ~16 % of the masked weights: sparsity ~84 %, below the 98 % bar
    assert written["sparsity"] < bars["min_sparsity"] and written["met_min_sparsity"] is False
    missed = [bar for bar in BARS if not written[f"met_{bar}"]]
    assert written["verdict"] == ", ".join(missed)
    # with bars this run meets, the verdict says so
    lenient = {
        "min_sparsity": 0.0,
        "min_target_ratio": 0.0,
        "max_random_share": math.inf,
        "max_controlkg_ratio": math.inf,
        "max_controllm_ratio": math.inf,
    }
    assert ablation.headline(result, lenient).verdict == "all met"


def test_check_bars_names_each_missed_bar():
    bars = dataclasses.asdict(base_params().report.bars)  # 0.98, x10, 0.1, 1.10, 1.05
    good = metrics("m", "A", 0, (190.0, 1.0, 0.2), (1.0, 0.1, 0.1), sparsity=0.99)  # TargetKG x20, share 0.1/19
    assert check_bars(good, bars)["verdict"] == "all met"
    leaky = metrics("m", "A", 1, (190.0, 2.0, 0.2), (1.0, 0.1, 0.1), sparsity=0.99)  # ControlKG x1.2
    checked = check_bars(leaky, bars)
    assert checked["verdict"] == "max_controlkg_ratio" and checked["ratio_removed_controlkg"] == pytest.approx(1.2)
    assert [checked[f"met_{bar}"] for bar in BARS] == [True, True, True, False, True]
    # the control bars are two-sided: ControlKG falling to x0.8 is damage too (x1/1.10 = 0.909 is the edge)
    falling = metrics("m", "A", 2, (190.0, -2.0, 0.2), (1.0, 0.1, 0.1), sparsity=0.99)  # ControlKG x0.8
    assert check_bars(falling, bars)["verdict"] == "max_controlkg_ratio"
    inside = metrics("m", "A", 3, (190.0, -0.9, 0.2), (1.0, 0.1, 0.1), sparsity=0.99)  # ControlKG x0.91
    assert check_bars(inside, bars)["verdict"] == "all met"
    weak = metrics("m", "B", 0, (50.0, 0.0, 0.0), (10.0, 0.0, 0.0), sparsity=0.97)  # x6, share 0.2
    assert check_bars(weak, bars)["verdict"] == "min_sparsity, min_target_ratio, max_random_share"
    inert = metrics("m", "B", 1, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), sparsity=0.99)  # TargetKG not raised at all
    assert check_bars(inert, bars)["random_share"] == math.inf
    assert check_bars(inert, bars)["verdict"] == "min_target_ratio, max_random_share"
