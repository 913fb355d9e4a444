"""Joining splits with verbalisations: the known-facts filter and missing verbalisations."""

import pandas as pd
import pytest

from knowsubnet.core.config import Known
from knowsubnet.core.errors import InputError
from knowsubnet.data.factsets import load_split_factset, read_verbalized


@pytest.fixture
def files(tmp_path):
    facts = pd.DataFrame(
        {
            "uuid": ["a", "b", "c"],
            "head": ["dog", "cat", "oak"],
            "rel": ["IsA"] * 3,
            "tail": ["animal", "pet", "tree"],
            "source": ["builtin"] * 3,
        }
    )
    facts.to_parquet(tmp_path / "split.parquet", index=False)
    verbalized = facts.drop(columns="source").assign(
        template_id=0,
        prompt=["A dog is an", "A cat is a", "An oak is a"],
        tail_text=[" animal", " pet", " tree"],
        tail_ppl=[3.0, 250.0, 40.0],
    )
    verbalized.to_parquet(tmp_path / "verbalized.parquet", index=False)
    return tmp_path / "split.parquet", tmp_path / "verbalized.parquet"


def test_all_facts_by_default_in_split_order(files, gpt2_style):  # noqa: F811
    split, verbalized = files
    facts = load_split_factset(split, read_verbalized(verbalized), gpt2_style, scored_positions="all_tail_tokens")
    assert facts.uuids == ["a", "b", "c"]


def test_known_facts_filter_drops_high_perplexity_tails(files, gpt2_style):  # noqa: F811
    split, verbalized = files
    facts = load_split_factset(
        split,
        read_verbalized(verbalized),
        gpt2_style,
        Known(max_tail_ppl=100, min_head_gain=None),
        scored_positions="all_tail_tokens",
    )
    assert facts.uuids == ["a", "c"]
    assert facts.input_ids.shape[0] == 2


def test_head_gain_filter_is_relative_to_other_heads(files, gpt2_style):  # noqa: F811
    split, verbalized = files
    frame = read_verbalized(verbalized)
    frame["head_gain"] = [5.0, 1.5, 0.9]  # a, b, c: only a's head makes its tail much likelier
    facts = load_split_factset(
        split, frame, gpt2_style, Known(max_tail_ppl=None, min_head_gain=2.0), scored_positions="all_tail_tokens"
    )
    assert facts.uuids == ["a"]
    both = load_split_factset(
        split, frame, gpt2_style, Known(max_tail_ppl=100, min_head_gain=1.0), scored_positions="all_tail_tokens"
    )
    assert both.uuids == ["a"]  # c passes PPL but not the gain, b the gain but not PPL


def test_head_gain_filter_needs_the_baseline_column(files, gpt2_style):  # noqa: F811
    split, verbalized = files
    with pytest.raises(InputError, match="verbalize.other_heads"):
        load_split_factset(
            split,
            read_verbalized(verbalized),
            gpt2_style,
            Known(max_tail_ppl=None, min_head_gain=2.0),
            scored_positions="all_tail_tokens",
        )


def test_filter_that_keeps_nothing_names_the_key(files, gpt2_style):  # noqa: F811
    split, verbalized = files
    with pytest.raises(InputError, match="params section 'known'"):
        load_split_factset(
            split,
            read_verbalized(verbalized),
            gpt2_style,
            Known(max_tail_ppl=2, min_head_gain=None),
            scored_positions="all_tail_tokens",
        )


def test_fact_without_verbalisation_is_named(files, gpt2_style):  # noqa: F811
    split, verbalized = files
    frame = read_verbalized(verbalized).drop(index="b")
    with pytest.raises(InputError, match="first uuid b"):
        load_split_factset(split, frame, gpt2_style, scored_positions="all_tail_tokens")


def test_every_template_of_the_known_facts(files, gpt2_style):  # noqa: F811
    from knowsubnet.data import relations

    split, verbalized = files
    facts = load_split_factset(
        split,
        read_verbalized(verbalized),
        gpt2_style,
        Known(max_tail_ppl=100, min_head_gain=None),
        templates="all",
        scored_positions="all_tail_tokens",
    )
    n = len(relations.TEMPLATES["IsA"])
    assert facts.uuids == ["a"] * n + ["c"] * n  # the known facts only, each in every template
    with pytest.raises(InputError, match="train.targetkg_templates"):
        load_split_factset(
            split, read_verbalized(verbalized), gpt2_style, templates="some", scored_positions="all_tail_tokens"
        )
