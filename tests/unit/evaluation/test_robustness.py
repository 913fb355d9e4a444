"""The robustness probes (evaluation.probes / relearn / robustness) on a toy GPT-2 and toy facts:
what each probe builds, that an empty mask shows no suppression anywhere and leaves the recovered
fraction undefined, that relearning holds removed weights at zero, and that held-out TargetKG
facts never reach discovery."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import base_params, save_tiny_gpt2, split_choices

from knowsubnet.data import relations, splits
from knowsubnet.data.encoding import encode_facts
from knowsubnet.evaluation import probes, relearn, robustness
from knowsubnet.evaluation import robustness_stats as stats
from knowsubnet.method import masking
from knowsubnet.scoring.cached import CachedFacts
from knowsubnet.scoring.facts import score_facts

pytestmark = pytest.mark.usefixtures("one_thread")

FACTS = [
    ("apple", "IsA", "fruit"),
    ("dog", "IsA", "animal"),
    ("oak", "IsA", "tree"),
    ("rose", "IsA", "flower"),
    ("salmon", "IsA", "fish"),
    ("trout", "IsA", "fish"),
    ("car", "IsA", "vehicle"),
    ("hammer", "IsA", "tool"),
    ("apple", "IsA", "food"),
    ("knife", "UsedFor", "cutting"),
    ("bed", "UsedFor", "sleeping"),
    ("pen", "UsedFor", "writing"),
    ("fish", "AtLocation", "water"),
    ("book", "AtLocation", "library"),
    ("car", "AtLocation", "garage"),
    ("dog", "AtLocation", "kennel"),
    ("oak", "AtLocation", "forest"),
    ("apple", "AtLocation", "orchard"),
]


def facts_frame() -> pd.DataFrame:
    return pd.DataFrame([(f"f{i:02d}", *fact) for i, fact in enumerate(FACTS)], columns=["uuid", "head", "rel", "tail"])


def verbalized_frame(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for fact in frame.itertuples(index=False):
        prompt, tail_text = relations.verbalize(fact.rel, 0, fact.head, fact.tail)
        rows.append((*fact, 0, prompt, tail_text, 5.0))
    return pd.DataFrame(rows, columns=["uuid", "head", "rel", "tail", "template_id", "prompt", "tail_text", "tail_ppl"])


# ---------------------------------------------------------------------------------------------
# probes: pure table work


def test_held_out_wordings_are_the_ones_no_template_choice_or_training_reads():
    for rel in relations.ALL_RELATIONS:
        held = set(relations.heldout_wording_ids(rel))
        assert len(held) >= 2
        # verbalize chooses among all_verbalizations; discovery trains on them (targetkg_templates: all)
        assert not held & {t for t, _, _ in relations.all_verbalizations(rel, "apple", "fruit")}
    facts = verbalized_frame(facts_frame()).iloc[:2].assign(template_id=[0, 3])
    out = probes.in_wordings("w", facts, probes.heldout_wordings(["IsA"]))
    assert set(out["template_id"]) == set(relations.heldout_wording_ids("IsA"))
    assert all(
        s.endswith(" fruit") for s in (out[out["uuid"] == "f00"]["prompt"] + out[out["uuid"] == "f00"]["tail_text"])
    )
    # the trained wordings: the train facts' best templates, or every template with targetkg_templates all
    assert probes.trained_wordings(facts, "best") == {"IsA": [0, 3]}
    assert probes.trained_wordings(facts, "all") == {"IsA": list(range(len(relations.TEMPLATES["IsA"])))}


def test_template_choice_and_training_never_write_a_held_out_wording(workspace, tmp_path, monkeypatch):
    """Every sentence verbalize chooses among and discovery trains on (best or all templates) is
    written through relations.verbalize: record the template ids it is asked for."""
    from knowsubnet.data import factsets

    asked = []
    original = relations.verbalize
    monkeypatch.setattr(
        relations, "verbalize", lambda rel, tid, h, t: asked.append((rel, tid)) or original(rel, tid, h, t)
    )
    table = facts_frame()
    relations.candidate_sentences(table)  # verbalize's candidates
    table.to_parquet(tmp_path / "split.parquet", index=False)
    for templates in ("best", "all"):
        factsets.load_split_factset(
            tmp_path / "split.parquet",
            verbalized_frame(table).set_index("uuid"),
            workspace["tokenizer"],
            templates=templates,
            scored_positions="all_tail_tokens",
        )
    assert asked and not [(rel, tid) for rel, tid in asked if tid in relations.heldout_wording_ids(rel)]


def test_other_heads_and_in_context_sentences():
    facts = verbalized_frame(facts_frame())
    isa = facts[facts["rel"] == "IsA"]
    others = probes.other_heads("w", isa.iloc[:3], {"IsA": [5, 6]}, 2, seed=0)
    assert len(others) == 3 * 2 * 2 and set(others["probe"]) == {"other_head:w"}
    for row in others.itertuples(index=False):  # the fact's tail after another fact's head
        own = isa.set_index("uuid").loc[row.uuid]
        assert row.tail_text == " " + own["tail"] and own["head"] not in row.prompt.lower().split()
    context = probes.in_context("c", isa.iloc[:2], facts, 3, seed=0)
    first = context.iloc[0]
    assert first["prompt"].count(".") == 3 and first["prompt"].endswith(isa.iloc[0]["prompt"])
    assert "apple" not in first["prompt"][: -len(isa.iloc[0]["prompt"])]  # no shared head or tail in context
    assert probes.in_context("c", isa.iloc[:2], facts, 0, seed=0)["prompt"].tolist() == isa.iloc[:2]["prompt"].tolist()


def test_choices_never_offer_a_true_tail_of_the_head_as_a_false_one():
    table = facts_frame()
    facts = verbalized_frame(table)
    isa = facts[facts["rel"] == "IsA"]
    out = probes.choices("c", isa, table, k=5, seed=0)
    for uuid, group in out.groupby("uuid"):
        fact = isa.set_index("uuid").loc[uuid]
        assert group["is_true"].sum() == 1 and len(group) == 5
        false_tails = {t.strip() for t in group.loc[~group["is_true"], "tail_text"]}
        true_of_head = set(table[(table["head"] == fact["head"]) & (table["rel"] == "IsA")]["tail"])
        assert not false_tails & true_of_head  # apple: neither fruit nor food is offered as false
        assert false_tails <= set(table[table["rel"] == "IsA"]["tail"])
    again = probes.choices("c", isa, table, k=5, seed=0)
    pd.testing.assert_frame_equal(out, again)  # the same candidates for every model variant


def test_an_empty_probe_keeps_the_candidates_typed():
    """A probe with no sentences (building's relation: no same-head facts) must not turn the
    concatenated `is_true` into objects, where `~is_true` is -1 / -2 instead of a mask."""
    table = facts_frame()
    isa = verbalized_frame(table)
    isa = isa[isa["rel"] == "IsA"]
    empty = probes.choices("c", isa.iloc[:0], table, k=5, seed=0)
    assert len(empty) == 0 and empty["is_true"].dtype == bool
    frame = pd.concat(
        [probes.choices("c", isa, table, k=3, seed=0), empty, probes.in_wordings("p", isa.iloc[:0], {"IsA": [5]})],
        ignore_index=True,
    )
    assert frame["is_true"].dtype == bool
    frame["nll_original"] = [0.5 if true else 1.0 for true in frame["is_true"]]
    assert stats.top1(frame, "original").eq(1.0).all()


def test_same_head_facts_are_other_relations_of_the_targets_heads():
    table = facts_frame()
    target = table[table["rel"] == "IsA"]
    out = probes.same_head_facts(table, target, "IsA", n=100, seed=0)
    expected = table[(table["rel"] != "IsA") & table["head"].isin(target["head"])]
    assert set(out["uuid"]) == set(expected["uuid"]) and set(out["rel"]) <= {"AtLocation", "UsedFor"}


def test_halves_are_disjoint_and_cover():
    first, second = probes.halves([f"u{i}" for i in range(9)], seed=3)
    assert not set(first) & set(second) and len(first) + len(second) == 9


def test_ratio_and_share_statistics():
    frame = pd.DataFrame({"uuid": ["a", "a", "b"], "nll_original": [1.0, 1.0, 2.0], "nll_removed": [1.0, 3.0, 2.0]})
    result = stats.ratio_ci(frame, "removed", n_boot=200, seed=0)
    assert result["ratio"] == pytest.approx(math.exp((1.0 + 0.0) / 2))  # per fact first: a +1, b 0
    assert result["low"] <= result["ratio"] <= result["high"] and result["n_facts"] == 2
    same = frame.assign(nll_removed=frame["nll_original"])
    assert stats.ratio_ci(same, "removed", 200, 0) == {"ratio": 1.0, "low": 1.0, "high": 1.0, "n_facts": 2}
    shares = stats.suppressed_share(frame, "removed", threshold=math.e**1.5)
    assert shares.to_dict() == {"a": 0.5, "b": 0.0}
    choice = pd.DataFrame(
        {"uuid": ["a", "a", "b", "b"], "is_true": [True, False, True, False], "nll_original": [1.0, 2.0, 2.0, 1.0]}
    )
    assert stats.top1(choice, "original").to_dict() == {"a": 1.0, "b": 0.0}


def test_recovered_fraction_is_zero_for_an_unchanged_gap_one_for_a_closed_one():
    assert relearn.recovered_fraction(2.0, 2.0) == 0.0  # both models learned alike: the gap is untouched
    assert relearn.recovered_fraction(2.0, 0.0) == 1.0  # the remaining model caught up with the original
    assert relearn.recovered_fraction(2.0, 1.0) == pytest.approx(0.5)
    assert relearn.recovered_fraction(2.0, 3.0) == pytest.approx(-0.5)  # the gap widened
    assert relearn.recovered_fraction(0.0, -0.5) is None  # nothing removed: undefined, not 0
    assert relearn.recovered_fraction(math.log(1.5), 0.0) is None  # x1.5: too little to recover


def test_recovered_interval_over_facts_and_seeds():
    from knowsubnet.evaluation.relearning import recovered_interval

    rng = np.random.default_rng(0)
    original = rng.normal(3.0, 0.5, 40)
    before = {"original": original, "removed_held": original + 2.0}
    finetuned = [original - 1.0 + rng.normal(0, 0.01, 40) for _ in range(3)]  # both models learn alike
    untouched = recovered_interval(
        before,
        {"original": finetuned, "removed_held": [f + 2.0 for f in finetuned]},
        "removed_held",
        n_boot=200,
        seed=0,
    )
    assert untouched["recovered"] == pytest.approx(0.0, abs=1e-9) and untouched["low"] <= 0.0 <= untouched["high"]
    closed = recovered_interval(before, {"original": finetuned, "removed_held": finetuned}, "removed_held", 200, 0)
    assert closed["recovered"] == pytest.approx(1.0) and closed["per_seed"] == pytest.approx([1.0] * 3)
    nothing = recovered_interval(
        {"original": original, "removed_held": original},
        {"original": finetuned, "removed_held": finetuned},
        "removed_held",
        200,
        0,
    )
    assert nothing["recovered"] is None and nothing["low"] is None  # nothing was removed: undefined


# ---------------------------------------------------------------------------------------------
# a toy model and workspace


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from knowsubnet.models.tiny import train_tokenizer

    root = tmp_path_factory.mktemp("robustness")
    table = facts_frame()
    table.assign(source="builtin").to_parquet(root / "triplets.parquet", index=False)
    verbalized = verbalized_frame(table)
    text = " ".join(
        prompt + tail
        for prompt, tail in (
            relations.verbalize(r, t, h, o)
            for _, h, r, o in table.itertuples(index=False)
            for t in relations.paraphrase_ids(r)
        )
    )
    tokenizer = train_tokenizer([text] * 2, vocab_size=400, model_max_length=64)
    model = save_tiny_gpt2(tokenizer, root / "model")
    (root / "verbalized").mkdir()
    isa = table[table["rel"] == "IsA"]
    # held out: IsA train / val / test disjoint; the other relations are the ControlKG
    parts = {
        "targetkg_train": isa.iloc[:4],
        "targetkg_val": isa.iloc[4:6],
        "targetkg_test": isa.iloc[6:],
        "controlkg_train": table.iloc[9:13],
        "controlkg_val": table.iloc[13:15],
        "controlkg_test": table.iloc[15:],
    }
    for target, chosen in (
        ("IsA", parts),
        (
            "UsedFor",
            {
                k: table[table["rel"] == "UsedFor"] if k.startswith("t") else table[table["rel"] == "AtLocation"]
                for k in parts
            },
        ),
    ):
        folder = root / "splits" / target
        folder.mkdir(parents=True)
        for name, frame in chosen.items():
            frame.to_parquet(folder / f"{name}.parquet", index=False)
        verbalized.to_parquet(root / "verbalized" / f"{target}.parquet", index=False)
    from knowsubnet.data import encoding

    blocks = encoding.controllm_blocks(tokenizer, "an apple is a fruit and a dog is an animal " * 20, 16)
    encoding.save_blocks(root / "controllm" / "train.safetensors", blocks[:-2])
    encoding.save_blocks(root / "controllm" / "test.safetensors", blocks[-2:])
    layers = masking.find_maskable_layers(model, 1)
    return {"root": root, "layers": [layer.name for layer in layers], "tokenizer": tokenizer}


def toy_params(**robust):
    relearn = {
        "points": [{"scope": "masked", "lr": 1e-2, "steps": 3}, {"scope": "whole", "lr": 1e-3, "steps": 2}],
        "seeds": [0, 1],
        "batch": 2,
        "text_tokens": 8,
    }
    return base_params(
        {
            "run": {"targets": ["IsA", "UsedFor"]},
            "eval": {"random_draws": 2},
            "robustness": {"relearn": relearn, "bootstrap": 50, "device": "cpu", "candidates": 4, **robust},
        }
    )


def write_mask(root, name, fill):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(root / "model")
    layers = masking.find_maskable_layers(model, 1)
    logits = {layer.name: fill(layer.weight.shape) for layer in layers}
    path = root / f"{name}.safetensors"
    masking.save_mask(path, logits, {"granularity": "weight", "top_k_blocks": "1", "seed": "0"})
    return path


def run_stage(workspace, mask, out):
    root = workspace["root"]
    return robustness.evaluate_robustness(
        toy_params(),
        model="toy",
        target="IsA",
        seed=0,
        model_dir=root / "model",
        mask=mask,
        triplets=root / "triplets.parquet",
        splits_root=root / "splits",
        verbalized_root=root / "verbalized",
        controllm_dir=root / "controllm",
        out_dir=out,
    )


@pytest.fixture(scope="module")
def stage_runs(workspace):
    """The stage for an empty mask and for a mask of every third weight (the report test reads both)."""
    root = workspace["root"]
    empty = write_mask(root, "empty", lambda shape: torch.full(shape, -1.0))
    third = write_mask(
        root, "third", lambda shape: torch.where(torch.arange(math.prod(shape)).view(shape) % 3 == 0, 1.0, -1.0)
    )
    return {
        "empty": run_stage(workspace, empty, root / "out-empty"),
        "third": run_stage(workspace, third, root / "out-third"),
    }


def test_an_empty_mask_shows_nothing_removed_under_every_probe(workspace, stage_runs):
    root = workspace["root"]
    result = stage_runs["empty"]
    assert result["held_out"]["holdout"] is True
    words = result["wordings"]
    for section in (
        result["held_out"]["in_sample"],
        result["held_out"]["held_out"],
        words["train_heldout"],
        words["test_heldout"],
        words["test_trained"],
        result["in_context"]["3"],
        result["specificity"]["foreign_heads"],
        result["specificity"]["other_targets"]["UsedFor"],
    ):
        assert section["removed"]["ratio"] == 1.0
    assert words["test_heldout"]["suppressed_share"]["removed"]["share"] == 0.0
    assert words["test_heldout"]["suppressed_by_template"] == {5: 0.0, 6: 0.0}  # each held-out wording
    assert result["controlkg_kl"]["removed"] == 0.0
    choice = result["multiple_choice"]["targetkg"]
    assert choice["removed"]["share"] == choice["original"]["share"]
    # the hidden states read the same: every lens block, the linear probe, every rounding
    assert all(block["removed"] == 1.0 for block in result["readouts"]["lens"].values())
    probe = result["readouts"]["linear_probe"]["accuracy"]
    assert probe["removed"]["share"] == probe["original"]["share"]
    for bits in ("none", "8", "4"):
        assert result["quantized"][bits]["ratio"]["removed"] == {"targetkg": 1.0, "controlkg": 1.0, "controllm": 1.0}
    for point in result["relearning"]["points"]:
        for data in ("targetkg", "controlkg", "wikitext"):
            assert point["data"][data]["removed_held"]["recovered"] is None  # undefined, not 0
    headline = json.loads((root / "out-empty" / "headline.json").read_text())
    assert headline["relearn_targetkg_recovered"] is None and headline["test_heldout_wording_suppressed"] == 0.0
    sentences = pd.read_parquet(root / "out-empty" / "sentences.parquet")
    scored = sentences[~sentences["probe"].str.startswith("other_head:")]
    assert (scored["nll_removed"] == scored["nll_original"]).all()
    # held out: the relearning trained on the train facts and was scored on test facts only
    first = result["relearning"]["points"][0]["data"]["targetkg"]
    assert first["n_train"] == 4 and first["n_scored"] == 3
    assert result["random_draws"] == 2


def test_the_result_files_read_and_write_back_to_the_same_bytes(workspace, stage_runs, tmp_path):
    """Written through RobustnessResult / RobustnessHeadline: the bytes write_json gave the result
    dict before the types, and a file read and written back is the same file."""
    from knowsubnet.core.io import canonical_json
    from knowsubnet.evaluation.robustness_results import RobustnessHeadline, RobustnessResult

    folder = workspace["root"] / "out-third"
    assert (folder / "robustness.json").read_text() == canonical_json(stage_runs["third"])
    for kind, name in ((RobustnessResult, "robustness.json"), (RobustnessHeadline, "headline.json")):
        typed = kind.read(folder / name)
        typed.write(tmp_path / name)
        assert (tmp_path / name).read_bytes() == (folder / name).read_bytes()
        assert kind.read(tmp_path / name) == typed
    result = RobustnessResult.read(folder / "robustness.json")
    assert result.held_out.in_sample.removed.ratio == stage_runs["third"]["held_out"]["in_sample"]["removed"]["ratio"]
    assert robustness.headline(result) == RobustnessHeadline.read(folder / "headline.json")


def test_the_goal_table_reads_the_stage_files(workspace, stage_runs, tmp_path):
    """report.goals on the stage's files: the empty mask removes nothing, so it misses the TargetKG goal,
    and relearning's, whose recovered fraction is undefined; one row per file, in the order given."""
    from knowsubnet.core.config import Bars, Goals
    from knowsubnet.report.goals import COLUMNS, goal_table

    root = workspace["root"]
    runs = [("empty", root / "out-empty" / "robustness.json"), ("third", root / "out-third" / "robustness.json")]
    table = goal_table(runs, Bars(), Goals(), tmp_path)
    assert list(table["point"]) == ["empty", "third"] and list(table.columns[: len(COLUMNS)]) == COLUMNS
    empty = table.iloc[0]
    assert empty["targetkg_x"] == 1.0 and empty["suppressed_test"] == 0.0
    assert empty["missed"].startswith("targetkg") and "relearning" in empty["missed"]
    assert (tmp_path / "goals.md").read_text().count("\n| ") == 4  # the header, its rule and two rows
    assert (tmp_path / "goals.csv").read_text().startswith(",".join(COLUMNS))


def test_a_mask_that_removes_weights_changes_the_scores(workspace, stage_runs):
    root = workspace["root"]
    result = stage_runs["third"]
    assert result["held_out"]["in_sample"]["removed"]["ratio"] != 1.0
    assert result["controlkg_kl"]["removed"] > 0.0
    assert result["quantized"]["4"]["ratio"]["removed"]["targetkg"] != 1.0
    sentences = pd.read_parquet(root / "out-third" / "sentences.parquet")
    held = sentences[sentences["probe"] == "wording:test:heldout"]
    assert set(held["template_id"]) == set(relations.heldout_wording_ids("IsA"))
    trained = sentences[sentences["probe"] == "wording:test:trained"]
    assert set(trained["template_id"]) == {0}  # the toy train facts' best template
    assert set(sentences["probe"]) >= {
        "targetkg_train",
        "targetkg_test",
        "controlkg_test",
        "choice_targetkg",
        "foreign_heads",
        "same_head",
        "other:UsedFor",
        "in_context:8",
    }


def test_the_report_section_has_a_row_per_run_and_the_figure(workspace, stage_runs):
    from knowsubnet.report import robustness as section

    root = workspace["root"]
    paths = [root / name / "robustness.json" for name in ("out-empty", "out-third")]
    lines, written = section.section(paths, root / "tables", root / "figures", dpi=40)
    table = pd.read_csv(written["robustness_csv"])
    assert set(table["target"]) == {"IsA"} and set(table["seed"]) == {0} and len(table) > 2
    held = table[(table["question"] == "held_out") & (table["measure"] == "held_out") & (table["variant"] == "removed")]
    assert len(held) == 2  # one per run
    assert written["fig_robustness"].stat().st_size > 0
    text = "\n".join(lines)
    assert "## Removed, or only hidden?" in text and "undefined" in text  # the empty mask's recovered fraction
    for title in (
        "Held-out facts",
        "Held-out wordings",
        "Facts in context",
        "Other readouts",
        "Quantization",
        "Relearning",
        "Specificity",
    ):
        assert f"### {title}" in text
    assert "toy: mask of" in text  # the specificity matrix
    assert "### Across seeds" not in text  # one seed
    # a second seed of the same mask target: the pooled table appears
    import shutil

    shutil.copytree(root / "out-third", root / "out-third-s1", dirs_exist_ok=True)
    record = json.loads((root / "out-third-s1" / "robustness.json").read_text())
    (root / "out-third-s1" / "robustness.json").write_text(json.dumps({**record, "seed": 1}))
    lines, _ = section.section(
        [root / "out-third" / "robustness.json", root / "out-third-s1" / "robustness.json"],
        root / "tables2",
        root / "figures2",
        dpi=40,
    )
    pooled = "\n".join(lines).split("### Across seeds")[1]
    assert "| toy / IsA | 0, 1 |" in pooled


def test_ratios_pooled_over_seeds_resample_seeds_and_facts():
    frame = pd.DataFrame({"uuid": ["a", "b", "c"], "nll_original": [1.0, 1.0, 1.0], "nll_removed": [2.0, 2.0, 2.0]})
    same = stats.pooled_ratio_ci([frame, frame], "removed", 100, 0)
    assert same["ratio"] == pytest.approx(math.e) and same["low"] == pytest.approx(math.e) and same["n_seeds"] == 2
    other = frame.assign(nll_removed=[1.0, 1.0, 1.0])  # a second seed that removes nothing
    pooled = stats.pooled_ratio_ci([frame, other], "removed", 400, 0)
    assert pooled["ratio"] == pytest.approx(math.exp(0.5))
    assert pooled["low"] < pooled["ratio"] < pooled["high"]  # the seeds disagree: the interval says so


def test_relearning_holds_removed_weights_at_zero_and_restores_the_model(workspace):
    from transformers import AutoModelForCausalLM

    root = workspace["root"]
    model = AutoModelForCausalLM.from_pretrained(root / "model").eval().requires_grad_(False)
    layers = masking.find_maskable_layers(model, 1)
    before = {layer.name: layer.weight.detach().clone() for layer in layers}
    removed = {
        layer.name: torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(1)) < 0.2 for layer in layers
    }
    table = verbalized_frame(facts_frame())
    facts = CachedFacts(
        model,
        layers,
        encode_facts(
            workspace["tokenizer"],
            table["prompt"].tolist(),
            table["tail_text"].tolist(),
            scored_positions="all_tail_tokens",
        ),
        "cpu",
    )
    # the cached top blocks score like the whole model
    full = score_facts(model, facts.facts, 4)["nll"].mean()
    assert facts.mean_nll() == pytest.approx(float(full), abs=1e-5)
    with relearn.finetuned(
        layers, facts, removed=removed, granularity="weight", hold_zero=True, steps=8, lr=1e-2, batch=6, seed=0
    ) as losses:
        for layer in layers:
            assert (layer.weight[removed[layer.name]] == 0).all()
            assert not torch.equal(layer.weight[~removed[layer.name]], before[layer.name][~removed[layer.name]])
    assert losses[-1] < losses[0]  # the finetune lowers the loss on what it trains on
    with relearn.finetuned(
        layers, facts, removed=removed, granularity="weight", hold_zero=False, steps=8, lr=1e-2, batch=6, seed=0
    ):
        assert any((layer.weight[removed[layer.name]] != 0).any() for layer in layers)  # free: removed weights train
    for layer in layers:
        assert torch.equal(layer.weight, before[layer.name]) and not layer.weight.requires_grad


# ---------------------------------------------------------------------------------------------
# held-out facts stay held out


def test_held_out_targetkg_splits_are_disjoint():
    table = facts_frame().assign(source="builtin")
    out = splits.make_splits(
        table,
        "IsA",
        {"rel": "IsA"},
        seed=0,
        fractions={"train": 0.5, "val": 0.2, "test": 0.3},
        targetkg_holdout=True,
        max_targetkg=None,
        max_controlkg={"train": 5, "val": 2, "test": 2},
        **split_choices(),
    )
    sets = [set(out[f"targetkg_{s}"]["uuid"]) for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert sum(map(len, sets)) == 9


def test_discovery_never_reads_the_held_out_test_facts(workspace, tmp_path):
    """Discovery (training and checkpoint selection) runs with the TargetKG test file unreadable:
    whatever it learned and chose, it did without the held-out facts."""
    from knowsubnet.data import encoding
    from knowsubnet.method.discover import discover

    root = workspace["root"]
    split_dir = tmp_path / "splits"
    split_dir.mkdir()
    for path in (root / "splits" / "IsA").glob("*.parquet"):
        (split_dir / path.name).write_bytes(path.read_bytes())
    (split_dir / "targetkg_test.parquet").write_text("not a parquet file: reading it would fail")
    controllm = tmp_path / "controllm"
    blocks = encoding.controllm_blocks(workspace["tokenizer"], "an apple is a fruit and a dog is an animal " * 20, 16)
    encoding.save_blocks(controllm / "train.safetensors", blocks[:-2])
    encoding.save_blocks(controllm / "val.safetensors", blocks[-2:])
    params = base_params(
        {
            "mask": {"top_k_blocks": 1},
            "split": {"targetkg_holdout": True},
            "train": {
                "steps": 2,
                "log_every": 1,
                "checkpoint_every": 2,
                "device": "cpu",
                "batch": {"targetkg": 2, "controlkg": 2, "controllm": 1},
                "select": {
                    "every": 1,
                    "min_sparsity": 0.0,
                    "min_target_ratio": 0.0,
                    "prefer": "least_damage",
                    "max_controlkg_ratio": 1.1,
                    "max_controllm_ratio": 1.05,
                },
            },
        }
    )
    meta = discover(
        params,
        model="toy",
        target="IsA",
        seed=0,
        model_dir=root / "model",
        verbalized=root / "verbalized" / "IsA.parquet",
        splits_dir=split_dir,
        controllm_dir=controllm,
        out_dir=tmp_path / "mask",
        progress=False,
    )
    test_uuids = set(pd.read_parquet(root / "splits" / "IsA" / "targetkg_test.parquet")["uuid"])
    assert meta["n_facts"]["targetkg_train"] == 4 and meta["n_facts"]["targetkg_val"] == 2
    assert not test_uuids & set(pd.read_parquet(split_dir / "targetkg_train.parquet")["uuid"])
    assert not test_uuids & set(pd.read_parquet(split_dir / "targetkg_val.parquet")["uuid"])


def test_a_finetune_that_ruins_the_original_is_not_called_recovery():
    from knowsubnet.evaluation.robustness_results import Relearned
    from knowsubnet.report.robustness import _frac

    kept = Relearned(ppl_before=10.0, ppl_after=8.0, ppl_after_per_seed=[8.0])
    ruined = Relearned(ppl_before=10.0, ppl_after=500.0, ppl_after_per_seed=[500.0])
    value = Relearned(
        ppl_before=20.0, ppl_after=9.0, ppl_after_per_seed=[9.0], recovered=0.9, low=0.5, high=1.2, per_seed=[0.9]
    )
    assert _frac(value, kept) == "0.90 [0.50, 1.20]"
    assert "not recovery" in _frac(value, ruined)
    undefined = Relearned(ppl_before=10.0, ppl_after=10.0, ppl_after_per_seed=[10.0], per_seed=[None])
    assert _frac(None, kept) == "–" and _frac(undefined, kept) == "undefined"


# ---------------------------------------------------------------------------------------------
# the validation-wording check (evaluation.val_wordings): the sweep's choice never sees a test wording


def test_validation_wordings_are_neither_trained_nor_the_tests():
    for rel in relations.ALL_RELATIONS:
        val = set(relations.validation_wording_ids(rel))
        assert len(val) >= 2
        assert not val & set(relations.heldout_wording_ids(rel))
        assert not val & {t for t, _, _ in relations.all_verbalizations(rel, "apple", "fruit")}
        for tid in val:
            prompt, tail = relations.verbalize(rel, tid, "apple", "fruit")
            assert tail == " fruit" and "{" not in prompt


def test_the_validation_wording_check_scores_validation_facts_in_validation_wordings(workspace, tmp_path):
    from knowsubnet.data import factsets
    from knowsubnet.evaluation import val_wordings

    root = workspace["root"]
    params = toy_params()
    verbalized = factsets.read_verbalized(root / "verbalized" / "IsA.parquet")
    sentences = val_wordings.build_sentences(
        params, val_wordings.known_facts(params, root / "splits" / "IsA", verbalized)
    )
    val_uuids = {
        name: set(pd.read_parquet(root / "splits" / "IsA" / f"{name}.parquet")["uuid"])
        for name in ("targetkg_val", "controlkg_val")
    }
    for name, probe in val_wordings.PROBES.items():
        rows = sentences[sentences["probe"] == probe]
        assert len(rows) and set(rows["uuid"]) <= val_uuids[name]
        assert all(t in relations.validation_wording_ids(r) for r, t in zip(rows["rel"], rows["template_id"]))

    # the relearning check's text: validation blocks, never the training blocks the mask and the test use
    from knowsubnet.data import encoding

    text = encoding.controllm_blocks(workspace["tokenizer"], "the river runs past the old mill " * 20, 16)
    encoding.save_blocks(tmp_path / "val.safetensors", text)

    def check(mask):
        out = tmp_path / f"{mask.stem}.json"
        kwargs = dict(
            model_dir=root / "model", splits_dir=root / "splits" / "IsA", controllm_val=tmp_path / "val.safetensors"
        )
        result = val_wordings.evaluate_val_wordings(
            params, mask=mask, verbalized=root / "verbalized" / "IsA.parquet", out=out, **kwargs
        )
        assert json.loads(out.read_text()) == json.loads(json.dumps(result))
        return result

    empty = check(write_mask(root, "empty-val", lambda shape: torch.full(shape, -1.0)))
    for name in val_wordings.PROBES:
        assert empty[name]["removed"]["ratio"] == 1.0
    assert empty["targetkg_val"]["suppressed_share"]["removed"]["share"] == 0.0
    # nothing removed, nothing to recover: the share is undefined, the check ran
    assert empty["relearn_text"]["removed_held"]["recovered"] is None
    assert empty["relearn_text"]["point"] == {"scope": "masked", "lr": 1e-2, "steps": 3}  # the first on text
    everything = check(write_mask(root, "all-val", lambda shape: torch.full(shape, 1.0)))
    assert everything["targetkg_val"]["removed"]["ratio"] != 1.0
    relearned = everything["relearn_text"]
    assert set(relearned) >= {"point", "original", "removed_held"} and "random_held" not in relearned
    assert relearned["removed_held"]["ppl_before"] > relearned["original"]["ppl_before"]
    # the original learns from the text; every masked weight removed and held at zero leaves nothing to
    # finetune, so the remaining model stays where it was
    assert relearned["original"]["ppl_after"] != relearned["original"]["ppl_before"]
    assert relearned["removed_held"]["ppl_after"] == relearned["removed_held"]["ppl_before"]
