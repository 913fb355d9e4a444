"""The typed params: read once, validated once, one set of defaults.

Params are YAML files merged in order: `config/base.yaml` holds every key with its default and
its documentation (it is the tiny preset); presets and overlays (`config/presets/`,
`config/overlays/`) name only what they change; `params.yaml`, the file DVC reads, is base + them
(`make params PRESET=<name> OVERLAY=<name>`); `KEY=VALUE` overrides change one key
(`apply_overrides`: `make params SET=train.steps=10`, `snakemake --config train__steps=10`). The
merged mapping is checked against the JSON schema (`config/params.schema.yaml`; a bad value is one
line naming its key), then typed into the frozen dataclasses below, one per section: a stage reads
`params.train.batch.targetkg`. No section has defaults in code: a missing key is an error naming it.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml

from knowsubnet.core.errors import InputError
from knowsubnet.core.schema_errors import error_line

# -- the sections (field names are the YAML keys; config/base.yaml documents each one) ----------

@dataclass(frozen=True)
class Data:
    mirror: str | None
    verify_checksums: bool


@dataclass(frozen=True)
class Triplets:
    sources: list[str]
    lama_path: str | None


@dataclass(frozen=True)
class Split:
    seed: int
    targetkg_holdout: bool
    holdout: str  # entity | fact: how a held-out TargetKG is split (data.heldout)
    fractions: dict[str, float]
    max_targetkg: int | None
    max_controlkg: dict[str, int | None]
    controlkg: str
    paper_wordnet_controlkg: int


@dataclass(frozen=True)
class Run:
    models: list[str]
    targets: list[str]
    seeds: list[int]
    baselines: list[str]


@dataclass(frozen=True)
class Verbalize:
    batch_size: int
    device: str
    other_heads: int
    seed: int
    scored_positions: str


@dataclass(frozen=True)
class Known:
    """Which facts the model knows; discovery and evaluation keep only those (null: bound off)."""
    max_tail_ppl: float | None
    min_head_gain: float | None


@dataclass(frozen=True)
class ControlLM:
    block_size: int
    max_train_blocks: int | None
    max_val_blocks: int
    max_test_blocks: int | None
    train_text: str
    test_fraction: float


@dataclass(frozen=True)
class HardConcrete:
    beta: float
    gamma: float
    zeta: float
    hard: bool


@dataclass(frozen=True)
class Mask:
    granularity: str
    top_k_blocks: float  # a count, or a share of the blocks when below 1
    sampler: str
    init_prob: float
    tau: float
    hard_concrete: HardConcrete


@dataclass(frozen=True)
class Ramp:  # `start` until the fraction `ramp_from` of the run, then linear to `end` at the last step
    start: float
    end: float
    ramp_from: float


@dataclass(frozen=True)
class Batch:
    targetkg: int
    controlkg: int
    controllm: int


@dataclass(frozen=True)
class Select:  # checkpoint selection on the validation sets (`method.training.select_checkpoint`)
    every: int
    min_sparsity: float
    min_target_ratio: float


@dataclass(frozen=True)
class Train:
    steps: int
    lr: float
    warmup_frac: float
    lambda_suppress: float
    lambda_controlkg: float
    lambda_controllm: float
    lambda_expression: float
    sparsity_weight: Ramp
    noise_scale: Ramp
    batch: Batch
    log_every: int
    checkpoint_every: int
    device: str
    dtype: str
    controlkg_known_only: bool
    group_by_length: bool
    targetkg_templates: str
    select: Select


@dataclass(frozen=True)
class Eval:
    random_draws: int
    batch_size: int
    device: str
    dtype: str
    controllm_ppl: str


@dataclass(frozen=True)
class Relearn:  # `evaluation.relearning`
    points: list[dict[str, Any]]  # each {scope: masked | whole, lr, steps}
    data: list[str]
    models: list[str]
    seeds: list[int]
    batch: int
    text_tokens: int
    dtype: str


@dataclass(frozen=True)
class Robustness:
    """Removed, or only hidden? (`evaluation.robustness`)."""
    max_facts: int
    candidates: int
    suppressed_ratio: float
    in_context: list[int]
    probe_l2: float
    quantize_bits: list[int]
    relearn: Relearn
    bootstrap: int
    seed: int
    batch_size: int
    device: str


@dataclass(frozen=True)
class RandomMagnitude:
    bins: int
    sweep: list[float]


@dataclass(frozen=True)
class Attribution:  # list settings: each is tried on validation, one kept (method.baselines.choose)
    contrast: list[float]
    signed: list[bool]
    min_target_ratio: float
    batch: int
    sweep: list[float]


@dataclass(frozen=True)
class Neurons:
    ig_steps: int
    contrast: list[float]
    min_target_ratio: float
    batch: int
    sweep: list[float]


@dataclass(frozen=True)
class Unlearning:  # GradDiff, and NPO's common fields (method.unlearning)
    steps: int
    lr: float
    warmup_frac: float
    lambda_forget: float
    lambda_controlkg: float
    lambda_controllm: float
    batch: Batch
    select_every: int
    min_target_ratio: float


@dataclass(frozen=True)
class Npo(Unlearning):
    beta: float


@dataclass(frozen=True)
class Rmu:  # representation misdirection (Li et al. 2024; method.unlearning)
    steps: int
    lr: float
    warmup_frac: float
    layer: int  # the masked block whose output is steered, counted from the top (1: the model's last block)
    steering_coeff: float
    alpha: float
    batch: Batch
    select_every: int
    min_target_ratio: float


@dataclass(frozen=True)
class Baselines:  # other removal methods (method.baselines; docs/BASELINES.md)
    device: str
    random_magnitude: RandomMagnitude
    attribution: Attribution
    neurons: Neurons
    graddiff: Unlearning
    npo: Npo
    rmu: Rmu


@dataclass(frozen=True)
class Bars:
    min_sparsity: float
    min_target_ratio: float
    max_random_share: float
    max_controlkg_ratio: float
    max_controllm_ratio: float


@dataclass(frozen=True)
class Report:
    combine: str
    top_n: int
    dpi: int
    bars: Bars


@dataclass(frozen=True)
class Csqa:
    modes: list[str]
    mask_seeds: list[int] | None  # which of run.seeds' masks (None: all)
    seeds: list[int]  # finetuning seeds, one finetuning of each variant per seed
    train_questions: int | None
    dev_questions: int | None
    epochs: dict[str, int]
    head_lr: float
    lr: dict[str, float]
    batch_size: int
    eval_batch_size: int
    weight_decay: float
    lora: dict[str, int]
    max_length: int
    bootstrap: int
    log_every: int
    checkpoint_every: int
    device: str
    dtype: str


@dataclass(frozen=True)
class Export:  # publishing a run's model (the export_remaining stage, evaluation.export)
    keep: str          # remaining: the subnetwork zeroed | subnetwork: only it kept in the masked layers
    seeds: list[int]   # which of run.seeds' masks the default target exports, per run model x target


@dataclass(frozen=True)
class Sweep:  # the search on validation (docs/SEARCH.md; method.sweep)
    points: dict[str, dict[str, Any]]  # name -> {method, set: a params overlay}


@dataclass(frozen=True)
class Params:
    data: Data
    triplets: Triplets
    targets: dict[str, dict[str, Any]]  # target name -> selector (data.splits.select_target)
    split: Split
    models: dict[str, dict[str, Any]]   # model name -> source spec (models.prepare.prepare_model)
    run: Run
    verbalize: Verbalize
    known: Known
    controllm: ControlLM
    mask: Mask
    train: Train
    eval: Eval
    robustness: Robustness
    baselines: Baselines
    report: Report
    csqa: Csqa
    export: Export
    sweep: Sweep

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
                    None, None, f"key {key!r} given twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def validate(mapping: dict, schema_path: str | Path, source: str = "params") -> None:
    """Check `mapping` against the schema, that run.targets and run.models are defined and that
    export.seeds are run seeds; the first problem is one InputError line naming its key (never the schema)."""
    schema = read_yaml(schema_path)
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(mapping), key=lambda e: list(e.absolute_path))
    if errors:
        raise InputError(f"{source}: {error_line(errors[0])}")
    for kind in ("targets", "models"):
        defined = sorted(mapping[kind])
        for name in mapping["run"][kind]:
            if name not in mapping[kind]:
                raise InputError(f"{source}: params key 'run.{kind}': {name!r} is not defined under "
                                 f"'{kind}'; defined: {', '.join(defined)}")
    for seed in (mapping.get("export") or {}).get("seeds") or []:  # an export needs the seed's mask
        if seed not in mapping["run"]["seeds"]:
            raise InputError(f"{source}: params key 'export.seeds': seed {seed} is not in run.seeds "
                             f"{mapping['run']['seeds']}")


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


def check_snakemake_config(mapping: dict, config_args: Iterable[str] | None, configfiles: Iterable[Any],
                           schema_path: str | Path) -> None:
    """The Snakefile's config: `--config KEY=VALUE` entries applied again from their text, as YAML
    (Snakemake reads nested values as strings: `[0]` would be ['0'], `null` 'null'), then validated."""
    config_args = list(config_args or [])
    apply_overrides(mapping, config_args, source="--config")
    source = " + ".join(["params.yaml", *map(str, configfiles)] + (["--config"] if config_args else []))
    validate(mapping, schema_path, source)


def _build(cls: type, value: Any, prefix: str, source: str):
    """`cls` from a mapping: nested sections recursively, every field required, no unknown key."""
    where = prefix.rstrip(".") or "(top level)"
    if not isinstance(value, dict):
        raise InputError(f"{source}: params key '{where}': expected a mapping, got {value!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise InputError(f"{source}: params key '{prefix}{unknown[0]}': unknown; valid keys here: {', '.join(sorted(names))}")
    kwargs = {}
    for name in names:
        if name not in value:
            raise InputError(f"{source}: params key '{prefix}{name}' is missing "
                             f"(every key has its default in config/base.yaml)")
        hint = hints[name]
        kwargs[name] = (_build(hint, value[name], f"{prefix}{name}.", source) if dataclasses.is_dataclass(hint)
                        else copy.deepcopy(value[name]))
    return cls(**kwargs)


def make(cls: type, mapping: dict, key: str | None = None):
    """One section (or sub-section) from its mapping, every key required: `make(Mask, {...})`."""
    return _build(cls, mapping, f"{key or cls.__name__.lower()}.", "params")


def from_mapping(mapping: dict, schema_path: str | Path | None = None, source: str = "params") -> Params:
    """Typed params from a merged mapping (validated against the schema when one is given)."""
    if schema_path is not None:
        validate(mapping, schema_path, source)
    return _build(Params, mapping, "", source)


def merge_files(paths: Iterable[str | Path]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in paths:
        merged = deep_merge(merged, read_yaml(path))
    return merged


def load(paths: Iterable[str | Path], schema_path: str | Path) -> Params:
    """Read each params file, merge them in order, validate the result once, type it."""
    paths = list(paths)
    return from_mapping(merge_files(paths), schema_path, source=" + ".join(str(p) for p in paths))
