"""The typed params: read once, validated once, one set of defaults.

Params are YAML files merged in order: `config/base.yaml` holds every key with its default and
its documentation (it is the tiny preset); a preset (`config/presets/<name>.yaml`) is a small
overlay that names only what it changes; `params.yaml`, the file DVC reads, is base + one overlay
(`make params.yaml PRESET=<name>`). The merged mapping is checked against the JSON schema
(`config/params.schema.yaml`), then turned into the frozen dataclasses below, one per section,
so that a stage reads `params.train.batch.targetkg`, not a string key with a default of its own.
No section has defaults in code: a missing key is an error naming the key.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml

from knowsubnet.core.errors import InputError

# ------------------------------------------------------------------------------------------------
# the sections (field names are the YAML keys; config/base.yaml documents each one)


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
class Ramp:
    """`start` until the fraction `ramp_from` of the run, then linear to `end` at the last step."""
    start: float
    end: float
    ramp_from: float


@dataclass(frozen=True)
class Batch:
    targetkg: int
    controlkg: int
    controllm: int


@dataclass(frozen=True)
class Select:
    """Checkpoint selection on the validation sets (`method.training.select_checkpoint`)."""
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
    bf16: bool
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
class Relearn:
    steps: int
    lr: float
    batch: int


@dataclass(frozen=True)
class Robustness:
    """Removed, or only hidden? (`evaluation.robustness`)."""
    max_facts: int
    candidates: int
    suppressed_ratio: float
    relearn: Relearn
    bootstrap: int
    seed: int
    batch_size: int
    device: str


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
    seeds: list[int] | None
    train_questions: int | None
    dev_questions: int | None
    epochs: dict[str, int]
    lr: dict[str, float]
    batch_size: int
    eval_batch_size: int
    weight_decay: float
    lora: dict[str, int]
    max_length: int
    seed: int | None
    bootstrap: int
    log_every: int
    checkpoint_every: int
    device: str


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
    report: Report
    csqa: Csqa

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
    schema = read_yaml(schema_path)
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(mapping), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise InputError(f"{source}: invalid value for params key '{key}': {err.message}")


def _build(cls: type, value: Any, prefix: str, source: str):
    """`cls` from a mapping: nested sections recursively, every field required, no unknown key."""
    where = prefix.rstrip(".") or "(top level)"
    if not isinstance(value, dict):
        raise InputError(f"{source}: params key '{where}': expected a mapping, got {value!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise InputError(f"{source}: unknown params key '{prefix}{unknown[0]}' (expected one of {', '.join(names)})")
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
