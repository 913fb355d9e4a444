"""The 16 LAMA-ConceptNet relations, WordNet's hypernym relation, and the project's own templates.

The paper scores several paraphrases per fact and keeps the one the model finds most natural
(lowest tail perplexity), so each relation has a handful of templates. They are written for this
project: the repo must not carry sentences from the datasets.

Template syntax (kept tiny on purpose, so the templates stay readable):

    {S}       the head as a noun phrase, capitalised ("A guitar", "Orchids", "Eating")
    {s}       the head as a noun phrase, lower case, for mid-sentence use
    {h}       the bare head, no article (for verbs and events: "To {h}, ...")
    {x|y}     `x` when the head is singular, `y` when it is plural ("{is|are}")
    {o}       the tail, bare — always the last thing in a template
    {a o}     the tail with an indefinite article when it needs one ("a whale", "an orange");
              the article stays in the prompt, the tail alone is what the model must predict

The tail is always the final span, so `prompt + tail_text` is the sentence and `tail_text`
(" " + tail) is exactly the part whose perplexity is measured.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import pandas as pd

from knowsubnet.core import free_form
from knowsubnet.core.errors import InputError
from knowsubnet.data.wordnet import synset_lemma

RELATIONS: tuple[str, ...] = tuple(free_form.RELATIONS)  # the 16 LAMA-ConceptNet relations; one list, the schema's
WORDNET_RELATIONS: tuple[str, ...] = ("Hypernym",)
ALL_RELATIONS: tuple[str, ...] = RELATIONS + WORDNET_RELATIONS

TEMPLATES: dict[str, tuple[str, ...]] = {
    "AtLocation": (
        "{S} {is|are} often found at {a o}",
        "{S} can usually be seen in {a o}",
        "The usual place for {s} is {a o}",
        "{S} {belongs|belong} in {a o}",
        "Where would you look for {s}? In {a o}",
    ),
    "CapableOf": (
        "{S} can {o}",
        "{S} {is|are} able to {o}",
        "{S} {has|have} the ability to {o}",
        "It is possible for {s} to {o}",
        "One thing {s} can do is {o}",
    ),
    "Causes": (
        "{S} can lead to {o}",
        "{S} often {causes|cause} {o}",
        "{S} {results|result} in {o}",
        "A common effect of {s} is {o}",
        "{S} {brings|bring} about {o}",
    ),
    "CausesDesire": (
        "{S} {makes|make} you want to {o}",
        "{S} can make a person want to {o}",
        "Because of {s}, you may feel the urge to {o}",
        "{S} {gives|give} people the desire to {o}",
        "When faced with {s}, people want to {o}",
    ),
    "Desires": (
        "{S} {wants|want} {a o}",
        "{S} {wants|want} to {o}",
        "{S} {likes|like} to be {o}",
        "{S} {longs|long} for {a o}",
        "What {s} really {wants|want} is {a o}",
    ),
    "HasA": (
        "{S} {has|have} {a o}",
        "{S} usually {comes|come} with {a o}",
        "{S} {contains|contain} {a o}",
        "{S} {possesses|possess} {a o}",
        "It is common for {s} to have {a o}",
    ),
    "HasPrerequisite": (
        "{S} {requires|require} {a o}",
        "For {h}, you need {a o}",
        "To {h}, you first need to {o}",
        "{S} cannot happen without {a o}",
        "A prerequisite for {h} is {a o}",
    ),
    "HasProperty": (
        "{S} {is|are} {o}",
        "{S} {tends|tend} to be {o}",
        "{S} can be described as {o}",
        "Most of the time, {s} {is|are} {o}",
        "People often say that {s} {is|are} {o}",
    ),
    "HasSubevent": (
        "{S} {involves|involve} {o}",
        "While {h}, people often {o}",
        "One part of {h} is {o}",
        "Something that happens during {h} is {o}",
        "{S} can include {o}",
    ),
    "IsA": (
        "{S} {is|are} {a o}",
        "{S} {is a kind|are kinds} of {o}",
        "{S} {is a type|are types} of {o}",
        "{S} can be classified as {a o}",
        "{S} {counts|count} as {a o}",
    ),
    "MadeOf": (
        "{S} {is|are} made of {o}",
        "{S} {is|are} made from {o}",
        "{S} {consists|consist} of {o}",
        "{S} {is|are} built out of {o}",
        "One thing {s} {is|are} made of is {o}",
    ),
    "MotivatedByGoal": (
        "You {h} because you want to {o}",
        "You {h} because you are {o}",
        "People {h} when they feel {o}",
        "You would {h} in order to {o}",
        "What drives people to {h} is {o}",
    ),
    "NotDesires": (
        "{S} {does|do} not want {a o}",
        "{S} {does|do} not want to {o}",
        "{S} {hates|hate} to be {o}",
        "{S} would rather avoid {o}",
        "The last thing {s} {wants|want} is {a o}",
    ),
    "PartOf": (
        "{S} {is|are} part of {a o}",
        "{S} {is|are} a component of {a o}",
        "{S} {belongs|belong} to {a o}",
        "{S} {makes|make} up part of {a o}",
        "{S} {is|are} one of the pieces of {a o}",
    ),
    "ReceivesAction": (
        "{S} can be {o}",
        "{S} {is|are} often {o}",
        "{S} {is|are} meant to be {o}",
        "It is common for {s} to be {o}",
        "{S} {gets|get} {o}",
    ),
    "Hypernym": (
        "{S} {is|are} {a o}",
        "{S} {is a kind|are kinds} of {o}",
        "{S} {is a type|are types} of {o}",
        "{S} {is a form|are forms} of {o}",
        "In general terms, {s} {is|are} {a o}",
    ),
    "UsedFor": (
        "{S} {is|are} used for {o}",
        "{S} {is|are} used to {o}",
        "{S} {is|are} useful for {o}",
        "People use {s} for {o}",
        "The purpose of {s} is {o}",
    ),
}

# Paraphrases that only the robustness probes use (`evaluation.robustness`): verbalize never scores
# them, so neither template choice nor the mask's training has seen a sentence written with them.
# Their ids follow the relation's TEMPLATES (5, 6, ...).
PARAPHRASES: dict[str, tuple[str, ...]] = {
    "AtLocation": ("You can find {s} in {a o}", "A place where {s} can be found is {a o}"),
    "CapableOf": ("{S} {knows|know} how to {o}", "Something {s} can do is {o}"),
    "Causes": ("{S} may cause {o}", "One consequence of {s} is {o}"),
    "CausesDesire": ("{S} can make someone want to {o}", "After {s}, people tend to want to {o}"),
    "Desires": ("{S} would like {a o}", "What {s} {hopes|hope} for is {a o}"),
    "HasA": ("{S} typically {has|have} {a o}", "Inside {s} there is {a o}"),
    "HasPrerequisite": ("Before {h}, you need {a o}", "{S} depends on {a o}"),
    "HasProperty": ("{S} {is|are} usually {o}", "A typical property of {s} is being {o}"),
    "HasSubevent": ("During {h}, people {o}", "A step in {h} is {o}"),
    "IsA": ("{S} {is an example|are examples} of {a o}", "{S} {falls|fall} under the category of {o}"),
    "MadeOf": ("{S} {is|are} produced from {o}", "The material of {s} is {o}"),
    "MotivatedByGoal": ("People {h} so that they can {o}", "The reason to {h} is to {o}"),
    "NotDesires": ("{S} {dislikes|dislike} {o}", "{S} {does|do} not like {o}"),
    "PartOf": ("{S} {is|are} found as part of {a o}", "{S} {forms|form} part of {a o}"),
    "ReceivesAction": ("{S} {is|are} usually {o}", "People often find {s} {o}"),
    "Hypernym": ("{S} {is an example|are examples} of {a o}", "{S} {falls|fall} under the category of {o}"),
    "UsedFor": ("{S} {helps|help} with {o}", "You would use {s} for {o}"),
}

# Wordings for choosing among removals on validation (`evaluation.val_wordings`, the sweep's
# selection): validation facts in these, never the test's held-out PARAPHRASES, so a recipe chosen
# for removing more than its trained wordings has not seen the test's wordings. Neither verbalize
# nor training scores them. Their ids follow the PARAPHRASES.
VALIDATION_WORDINGS: dict[str, tuple[str, ...]] = {
    "AtLocation": ("{S} {is|are} typically located in {a o}", "One place to come across {s} is {a o}"),
    "CapableOf": ("{S} will often {o}", "Given the chance, {s} can {o}"),
    "Causes": ("{S} {tends|tend} to produce {o}", "A result of {s} can be {o}"),
    "CausesDesire": ("{S} {leaves|leave} people wanting to {o}", "Thanks to {s}, someone might decide to {o}"),
    "Desires": ("{S} {wishes|wish} for {a o}", "Something {s} would enjoy is {a o}"),
    "HasA": ("{S} normally {includes|include} {a o}", "Part of what {s} {has|have} is {a o}"),
    "HasPrerequisite": ("In order to {h}, one must have {a o}", "{S} {is|are} only possible with {a o}"),
    "HasProperty": ("{S} {is|are} generally {o}", "One way to describe {s} is {o}"),
    "HasSubevent": ("As part of {h}, people {o}", "When {h}, you might {o}"),
    "IsA": ("{S} {is a member|are members} of the class of {o}", "{S} {belongs|belong} to the group called {o}"),
    "MadeOf": ("{S} {is|are} formed out of {o}", "To make {s}, you use {o}"),
    "MotivatedByGoal": ("People choose to {h} to {o}", "The goal of those who {h} is to {o}"),
    "NotDesires": ("{S} {avoids|avoid} {o}", "{S} would never ask for {a o}"),
    "PartOf": ("{S} {is|are} included in {a o}", "You can find {s} within {a o}"),
    "ReceivesAction": ("{S} {is|are} frequently {o}", "{S} will usually be {o}"),
    "Hypernym": ("{S} {is a member|are members} of the class of {o}", "{S} {belongs|belong} to the group called {o}"),
    "UsedFor": ("{S} {is|are} good for {o}", "A common use of {s} is {o}"),
}

# -- Noun-phrase heuristics ---------------------------------------------------------------------
# ConceptNet entities are lower-cased words or short phrases of every part of speech. These rules
# decide only what a template needs: an article or not, singular or plural agreement.

_DETERMINERS = frozenset("a an the this that these those my your his her its our their some any every each no".split())

# Words that end in "s" but are singular (or uncountable) all the same.
_SINGULAR_S = frozenset(
    """
    gas news lens chaos bias atlas canvas mathematics physics politics economics ethics species
    series always yes this his its us plus bus thus christmas texas paris tennis chess measles
    diabetes herpes mumps athletics gymnastics aerobics linguistics genetics electronics
""".split()
)

# Plural nouns that do not end in "s".
_IRREGULAR_PLURALS = frozenset("people children men women mice feet teeth geese police cattle oxen lice dice".split())

# Uncountable nouns: no article ("Water is ...", not "A water is ...").
_MASS_NOUNS = frozenset(
    """
    water air milk sugar salt sand money food music rice bread coffee tea wine beer juice oil gold
    silver iron steel copper aluminum aluminium wood paper plastic rubber wool cotton leather silk
    information knowledge love fear hate anger hunger thirst joy pain fun happiness sadness
    gravity energy electricity heat snow rain ice grass blood meat cheese butter honey chocolate
    soap hair fur dust dirt mud smoke weather traffic pollution health education art nature life
    death space time work homework advice furniture equipment luggage garbage trash research
    evidence peace violence freedom justice oxygen hydrogen carbon glass clothing flour pasta
    cereal soup candy poetry literature history science exercise sleep rest laughter pleasure
    success failure wealth poverty fame
""".split()
)

# Nouns ending in "-ing" that are things, not activities ("a ring", "a building").
_ING_NOUNS = frozenset(
    """
    thing king ring wing string spring ceiling building evening morning painting wedding pudding
    stocking sibling earring lightning something anything nothing everything icing stuffing
    dumpling duckling darling herring shilling awning inning offspring sling swing sting
    ping bring sing cling fling wring viking
""".split()
)

_AN_EXCEPTIONS = ("uni", "use", "usu", "ura", "uro", "ure", "uti", "eu", "ewe", "one", "once")
_AN_SILENT_H = ("hour", "honest", "honor", "honour", "heir")


def indefinite_article(word: str) -> str:
    """'a' or 'an' for the sound the word starts with (spelling heuristics, good for English)."""
    w = word.strip().lower()
    if not w:
        return "a"
    if w.startswith(_AN_SILENT_H):
        return "an"
    if w[0].isdigit():
        # Numbers read aloud: 8, 11, 18, 80 ... start with a vowel sound.
        return "an" if w.startswith(("8", "11", "18")) else "a"
    if w.startswith(_AN_EXCEPTIONS):
        return "a"
    if len(w) == 1:  # letters: "an f", "a b"
        return "an" if w in "aefhilmnorsx" else "a"
    return "an" if w[0] in "aeiou" else "a"


def is_plural(phrase: str) -> bool:
    """Whether a noun phrase is (probably) plural; decides 'is'/'are' and drops the article."""
    last = phrase.strip().lower().split()[-1] if phrase.strip() else ""
    if last in _IRREGULAR_PLURALS:
        return True
    if last in _SINGULAR_S or len(last) <= 3:
        return False
    return last.endswith("s") and not last.endswith(("ss", "us", "is", "ous"))


def _is_activity(phrase: str) -> bool:
    """'-ing' words used as activities ("swimming", "going home") take no article."""
    first = phrase.strip().lower().split()[0]
    return len(first) > 4 and first.endswith("ing") and first not in _ING_NOUNS


def needs_article(phrase: str) -> bool:
    """Whether a bare noun phrase reads better with 'a'/'an' in front (singular and countable)."""
    words = phrase.strip().lower().split()
    if not words:
        return False
    first, last = words[0], words[-1]
    if first in _DETERMINERS or first[0].isdigit() or not first[0].isalpha():
        return False
    if is_plural(phrase) or _is_activity(phrase):
        return False
    if last in _MASS_NOUNS or last.endswith("ness"):
        return False
    return True


def noun_phrase(phrase: str) -> str:
    """The phrase with an indefinite article when it needs one."""
    phrase = phrase.strip()
    return f"{indefinite_article(phrase)} {phrase}" if needs_article(phrase) else phrase


# -- Verbalisation ------------------------------------------------------------------------------

_FIELD = re.compile(r"\{([^{}]*)\}")
_TAIL_FIELDS = ("{o}", "{a o}")


def check_relation(rel: str) -> str:
    """Return `rel` if it is a known relation; otherwise InputError listing them."""
    if rel not in TEMPLATES:
        raise InputError(f"unknown relation {rel!r}; expected one of: {', '.join(ALL_RELATIONS)}")
    return rel


def canonical_relation(name: str) -> str | None:
    """The relation spelled `name` in any case ('isa' -> 'IsA'), or None if there is none."""
    return _BY_LOWER.get(name.strip().lower())


def verbalize(rel: str, template_id: int, head: str, tail: str) -> tuple[str, str]:
    """(prompt, tail_text) for one fact; `prompt + tail_text` is the sentence. Ids past the
    relation's TEMPLATES name its PARAPHRASES, then its VALIDATION_WORDINGS."""
    templates = TEMPLATES[check_relation(rel)] + PARAPHRASES[rel] + VALIDATION_WORDINGS[rel]
    if not isinstance(template_id, int) or not 0 <= template_id < len(templates):
        raise InputError(
            f"template_id {template_id!r} for relation {rel}: expected an integer from 0 to {len(templates) - 1}"
        )
    head, tail = head.strip(), tail.strip()
    if rel in WORDNET_RELATIONS:  # synset names -> their words
        head, tail = synset_lemma(head), synset_lemma(tail)
    if not head or not tail:
        raise InputError(f"cannot verbalise {rel} with an empty head or tail (head={head!r}, tail={tail!r})")
    template = templates[template_id]
    plural = is_plural(head)
    np = noun_phrase(head)

    def fill(match: re.Match) -> str:
        field = match.group(1)
        if field == "S":
            return np[0].upper() + np[1:]
        if field == "s":
            return np
        if field == "h":
            return head
        if "|" in field:
            singular, plural_form = field.split("|", 1)
            return plural_form if plural else singular
        raise AssertionError(f"unknown template field {{{field}}} in {template!r}")

    body, tail_field = template[: -len(_tail_field(template))], _tail_field(template)
    prompt = _FIELD.sub(fill, body).rstrip()
    if tail_field == "{a o}" and needs_article(tail):
        prompt = f"{prompt} {indefinite_article(tail)}"
    prompt = prompt[0].upper() + prompt[1:]
    return prompt, " " + tail


def all_verbalizations(rel: str, head: str, tail: str) -> list[tuple[int, str, str]]:
    """Every template of the relation applied to the fact: [(template_id, prompt, tail_text)]."""
    return [(i, *verbalize(rel, i, head, tail)) for i in range(len(TEMPLATES[check_relation(rel)]))]


def paraphrase_ids(rel: str) -> range:
    """Ids of every sentence form of the relation: its TEMPLATES, then its PARAPHRASES."""
    return range(len(TEMPLATES[check_relation(rel)]) + len(PARAPHRASES[rel]))


def heldout_wording_ids(rel: str) -> range:
    """Ids of the relation's held-out wordings (its PARAPHRASES): no template choice, training or
    checkpoint selection ever scores a sentence in them, only the robustness probes."""
    return range(len(TEMPLATES[check_relation(rel)]), len(TEMPLATES[rel]) + len(PARAPHRASES[rel]))


def validation_wording_ids(rel: str) -> range:
    """Ids of the relation's VALIDATION_WORDINGS: only the sweep's selection scores them (empty for a
    relation of the user's that gives none)."""
    start = len(TEMPLATES[check_relation(rel)]) + len(PARAPHRASES[rel])
    return range(start, start + len(VALIDATION_WORDINGS[rel]))


def _tail_field(template: str) -> str:
    for field in _TAIL_FIELDS:
        if template.endswith(field):
            return field
    raise AssertionError(f"template does not end with the tail: {template!r}")


_BY_LOWER = {rel.lower(): rel for rel in ALL_RELATIONS}

# Keep the table honest at import: every relation has 4-6 templates, each ending in the tail.
assert set(TEMPLATES) == set(ALL_RELATIONS) == set(PARAPHRASES) == set(VALIDATION_WORDINGS)
assert all(len(wordings) >= 2 for wordings in PARAPHRASES.values())  # issue 31: two unseen wordings each
assert all(len(wordings) >= 2 for wordings in VALIDATION_WORDINGS.values())
for _rel, _templates in TEMPLATES.items():
    assert 4 <= len(_templates) <= 6, _rel
    _all = _templates + PARAPHRASES[_rel] + VALIDATION_WORDINGS[_rel]
    assert len(set(_all)) == len(_all), _rel  # the three sets share no wording
    for _t in _all:
        _tail_field(_t)
        assert _t.count("{o}") + _t.count("{a o}") == 1, _t


_USER_FIELDS = re.compile(r"^(S|s|h|o|a o|[^{}|]*\|[^{}|]*)$")
_RELATION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def check_template(template: object, where: str) -> str:
    """A template in the syntax above, with exactly one tail field and the tail last; else InputError
    naming `where` (a file and key)."""
    if not isinstance(template, str) or not template.strip():
        raise InputError(
            f"{where}: expected a template string such as 'The capital of {{h}} is {{o}}', got {template!r}"
        )
    bad = [f for f in _FIELD.findall(template) if not _USER_FIELDS.match(f)]
    if bad:
        raise InputError(
            f"{where}: unknown field {{{bad[0]}}} in {template!r}; expected {{S}}, {{s}}, {{h}}, "
            f"{{x|y}}, and the tail {{o}} or {{a o}} last"
        )
    if template.count("{o}") + template.count("{a o}") != 1 or not template.endswith(_TAIL_FIELDS):
        raise InputError(f"{where}: {template!r} must end with the tail, {{o}} or {{a o}}, and name it once")
    return template


def add_relation(
    rel: str, templates: Sequence[str], heldout: Sequence[str], where: str, validation: Sequence[str] = ()
) -> None:
    """Register a relation of the user's (`data.user_facts.read_templates`): `templates` are what
    template choice and training read, `heldout` the wordings only the robustness probes read,
    `validation` those only the sweep's choice reads (none: its check has no sentence for the
    relation). A built-in relation cannot be redefined; registering the same templates again is a no-op."""
    if not isinstance(rel, str) or not _RELATION_NAME.match(rel):
        raise InputError(f"{where}: relation name {rel!r}: expected letters, digits and _ (such as CapitalOf)")
    if rel.lower() in {r.lower() for r in ALL_RELATIONS}:
        raise InputError(f"{where}: {rel} is a built-in relation (data/relations.py); give yours another name")
    wordings = (tuple(templates), tuple(heldout), tuple(validation))
    if rel in TEMPLATES and (TEMPLATES[rel], PARAPHRASES[rel], VALIDATION_WORDINGS[rel]) != wordings:
        raise InputError(f"{where}: relation {rel} is defined twice with different templates")
    TEMPLATES[rel], PARAPHRASES[rel], VALIDATION_WORDINGS[rel] = wordings
    _BY_LOWER[rel.lower()] = rel


# (rel, head, tail) -> [(template_id, prompt, tail_text)]
Verbalizer = Callable[[str, str, str], list[tuple[int, str, str]]]
SENTENCE_COLUMNS = ["uuid", "head", "rel", "tail", "template_id", "prompt", "tail_text"]


def candidate_sentences(
    triplets: pd.DataFrame, verbalizer: Verbalizer | None = None, source: str = "triplets"
) -> pd.DataFrame:
    """One row per (fact, template): SENTENCE_COLUMNS. `verbalizer` defaults to `all_verbalizations`."""
    missing = {"uuid", "head", "rel", "tail"} - set(triplets.columns)
    if missing:
        raise InputError(f"{source}: missing columns {sorted(missing)}; expected uuid, head, rel, tail")
    verbalizer = verbalizer or all_verbalizations
    rows = []
    for fact in triplets[["uuid", "head", "rel", "tail"]].itertuples(index=False):
        try:
            options = verbalizer(fact.rel, fact.head, fact.tail)
        except InputError as err:
            raise InputError(f"{source}: fact {fact.uuid} ({fact.head} {fact.rel} {fact.tail}): {err}") from None
        for template_id, prompt, tail_text in options:
            rows.append((fact.uuid, fact.head, fact.rel, fact.tail, int(template_id), prompt, tail_text))
    return pd.DataFrame(rows, columns=SENTENCE_COLUMNS)
