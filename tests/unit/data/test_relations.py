"""The relations and templates: tail always last, a/an and agreement right for every relation."""

from __future__ import annotations

import re

import pytest

from knowsubnet.core.errors import InputError
from knowsubnet.data.relations import (
    ALL_RELATIONS,
    RELATIONS,
    TEMPLATES,
    all_verbalizations,
    indefinite_article,
    is_plural,
    noun_phrase,
    verbalize,
)


def test_sixteen_relations_with_four_to_six_templates_each():
    assert len(RELATIONS) == 16 == len(set(RELATIONS))
    assert set(TEMPLATES) == set(ALL_RELATIONS) == set(RELATIONS) | {"Hypernym"}
    for rel in ALL_RELATIONS:
        assert 4 <= len(TEMPLATES[rel]) <= 6, rel
        assert len(set(TEMPLATES[rel])) == len(TEMPLATES[rel]), rel


@pytest.mark.parametrize("rel", RELATIONS)
@pytest.mark.parametrize(
    "head, tail", [("guitar", "orange"), ("apples", "wooden boxes"), ("swimming", "water"), ("umbrella", "red")]
)
def test_tail_is_the_final_span(rel, head, tail):
    for template_id, prompt, tail_text in all_verbalizations(rel, head, tail):
        assert tail_text == " " + tail
        sentence = prompt + tail_text
        assert sentence.endswith(" " + tail)
        assert prompt == prompt.strip() and "  " not in sentence
        assert prompt[0].isupper()
        assert not re.search(r"[{}|]", sentence), sentence
        assert (prompt, tail_text) == verbalize(rel, template_id, head, tail)


@pytest.mark.parametrize("rel", RELATIONS)
def test_head_article_and_agreement(rel):
    for template, (_, prompt, _) in zip(TEMPLATES[rel], all_verbalizations(rel, "apple", "x")):
        if "{S}" in template:
            assert prompt.startswith("An apple "), prompt
        if "{s}" in template:
            assert " an apple" in prompt, prompt
        if "{h}" in template:
            assert " apple" in prompt and "an apple" not in prompt, prompt
    for template, (_, prompt, _) in zip(TEMPLATES[rel], all_verbalizations(rel, "apples", "x")):
        assert "an apples" not in prompt.lower() and "a apples" not in prompt.lower()
        if template.startswith("{S} {is|are}"):
            assert prompt.startswith("Apples are"), prompt
        if template.startswith("{S} {has|have}"):
            assert prompt.startswith("Apples have"), prompt
    for _, prompt, _ in all_verbalizations(rel, "university", "x"):
        assert "an university" not in prompt.lower()


@pytest.mark.parametrize("rel", RELATIONS)
def test_tail_article_when_the_template_wants_one(rel):
    for template in TEMPLATES[rel]:
        template_id = TEMPLATES[rel].index(template)
        vowel, _ = verbalize(rel, template_id, "guitar", "orange")
        consonant, _ = verbalize(rel, template_id, "guitar", "banana")
        plural, _ = verbalize(rel, template_id, "guitar", "bananas")
        mass, _ = verbalize(rel, template_id, "guitar", "water")
        if template.endswith("{a o}"):
            assert vowel.endswith(" an") and consonant.endswith(" a"), template
            assert not plural.endswith((" a", " an")) and not mass.endswith((" a", " an"))
        else:
            assert not vowel.endswith(" an") and not consonant.endswith(" a"), template
    assert any(t.endswith("{a o}") for t in TEMPLATES["IsA"])


def test_examples_read_naturally():
    assert verbalize("IsA", 0, "guitar", "instrument") == ("A guitar is an", " instrument")
    assert verbalize("IsA", 0, "orchids", "plants") == ("Orchids are", " plants")
    assert verbalize("IsA", 1, "orchids", "plants") == ("Orchids are kinds of", " plants")
    assert verbalize("HasPrerequisite", 0, "eating", "appetite") == ("Eating requires an", " appetite")
    assert verbalize("PartOf", 0, "hour", "day") == ("An hour is part of a", " day")
    assert verbalize("HasProperty", 3, "mirrors", "reflective") == ("Most of the time, mirrors are", " reflective")
    assert verbalize("CapableOf", 0, "people", "dance") == ("People can", " dance")


def test_article_and_number_heuristics():
    assert [
        indefinite_article(w) for w in ("apple", "hour", "user", "unicorn", "umbrella", "egg", "one", "8", "x", "b")
    ] == ["an", "an", "a", "a", "an", "an", "a", "an", "an", "a"]
    assert is_plural("apples") and is_plural("people") and is_plural("wooden boxes")
    assert not any(is_plural(w) for w in ("glass", "bus", "news", "iris", "dangerous", "gas"))
    assert noun_phrase("water") == "water" and noun_phrase("running") == "running"
    assert noun_phrase("building") == "a building" and noun_phrase("the sun") == "the sun"


def test_unknown_relation_names_it_and_lists_the_known_ones():
    with pytest.raises(InputError, match=r"unknown relation 'BornIn'.*AtLocation.*UsedFor"):
        verbalize("BornIn", 0, "a", "b")
    with pytest.raises(InputError, match="BornIn"):
        all_verbalizations("BornIn", "a", "b")


def test_bad_template_id_and_empty_fact():
    with pytest.raises(InputError, match="template_id 9 for relation IsA"):
        verbalize("IsA", 9, "guitar", "instrument")
    with pytest.raises(InputError, match="empty head or tail"):
        verbalize("IsA", 0, "  ", "instrument")
