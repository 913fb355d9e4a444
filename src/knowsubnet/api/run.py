"""One model and one target in a folder of your own: the pipeline's stages in order, outside the repository.

A `Run` lays out its folder as the pipeline lays out the repository (data/raw, data/processed,
results/models, results/masks, ...), calls the same stage functions with the same params, and so
writes the same files. Each step is skipped when its output exists (outputs are written atomically,
and discovery resumes from its checkpoint), so a killed command picks up where it stopped. A folder
belongs to one set of params: `params.yaml` in it records them, and other params stop with one
line rather than mix two runs.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from knowsubnet.core import config
from knowsubnet.core.errors import InputError
from knowsubnet.core.io import read_json, read_text, write_text
from knowsubnet.data import user_facts
from knowsubnet.data.fetch import fetch_from_params
from knowsubnet.data.split_stage import split_targets
from knowsubnet.data.triplets import extract_triplets
from knowsubnet.evaluation.ablation import evaluate_mask
from knowsubnet.evaluation.export import export_from_params
from knowsubnet.evaluation.robustness import evaluate_robustness
from knowsubnet.method.discover import discover as discover_mask
from knowsubnet.models.controllm import write_controllm
from knowsubnet.models.prepare import prepare_from_params
from knowsubnet.scoring.templates import verbalize_facts

log = logging.getLogger(__name__)

DEFAULTS = Path(__file__).resolve().parents[1] / "defaults"  # shipped in the package (symlinks in the repo)
BASE_PARAMS, SCHEMA, FACTS_TABLE = (
    DEFAULTS / name for name in ("base.yaml", "params.schema.yaml", "conceptnet_facts.tsv")
)
# What a run outside the repository changes in the defaults (the tiny preset's): the facts come from
# the packaged ConceptNet table (no download of the paper's files), and the TargetKG is held out
# entity-disjoint, so evaluation reports held-out facts, not only the ones the mask trained on.
RUN_DEFAULTS = {"triplets": {"sources": ["builtin"]}, "split": {"targetkg_holdout": True}}
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _name(text: str) -> str:
    """A file-safe name (params names allow letters, digits, _ . -)."""
    name = _UNSAFE.sub("-", text).strip("-.") or "model"
    return name if re.match(r"[A-Za-z0-9_]", name) else f"m{name}"


def model_spec(model: str, defined: Mapping[str, Any]) -> tuple[str, dict]:
    """(name, params entry) for `model`: a name under params `models`, a Hugging Face folder, a
    .gguf file, or else a hub id."""
    if model in defined:
        return model, dict(defined[model])
    path = Path(model).expanduser()
    if path.is_dir():
        return _name(path.resolve().name), {"source": "local", "path": str(path.resolve())}
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise InputError(f"--model {model}: no such GGUF file")
        return _name(path.stem), {"source": "gguf", "path": str(path.resolve())}
    if path.exists():
        raise InputError(
            f"--model {model}: expected a Hugging Face model folder, a .gguf file, a hub id "
            f"or a model name under params 'models' ({', '.join(defined)})"
        )
    return _name(model.split("/")[-1]), {"source": "hub", "repo_id": model}


def build_params(
    model: str,
    facts: str | Path,
    *,
    templates: str | Path | None = None,
    controls: str | Path | None = None,
    target: str | None = None,
    seed: int = 0,
    params_files: Iterable[str | Path] = (),
    overrides: Mapping[str, Any] | None = None,
    sets: Iterable[str] = (),
) -> tuple[dict, str, str]:
    """The params mapping of one (model, fact file, seed) run: the packaged defaults, RUN_DEFAULTS,
    your params files, `overrides` (sections to merge) and `sets` (KEY=VALUE), then the model, the
    target and `run`; validated. Returns (mapping, model name, target name)."""
    mapping = config.deep_merge(config.read_yaml(BASE_PARAMS), RUN_DEFAULTS)
    for path in params_files:
        mapping = config.deep_merge(mapping, config.read_yaml(path))
    mapping = config.deep_merge(mapping, dict(overrides or {}))
    mapping = config.apply_overrides(mapping, list(sets))
    model_name, spec = model_spec(str(model), mapping["models"])
    facts = Path(facts)
    if not facts.is_file():
        raise InputError(f"--facts {facts}: no such file; expected a CSV, JSONL or parquet of head, relation, tail")
    target_name = target or _name(facts.stem)
    selector = {"facts": str(facts.resolve())}
    for key, path in (("templates", templates), ("controls", controls)):
        if path is not None:
            if not Path(path).is_file():
                raise InputError(f"--{key} {path}: no such file")
            selector[key] = str(Path(path).resolve())
    mapping["models"] = {model_name: spec}  # only what this run uses: params.yaml shows exactly it
    mapping["targets"] = {target_name: selector}
    mapping["run"] = {
        **mapping["run"],
        "models": [model_name],
        "targets": [target_name],
        "seeds": [int(seed)],
        "baselines": [],
    }
    mapping["export"] = {**mapping["export"], "seeds": []}
    config.validate(mapping, SCHEMA, source="knowsubnet")
    return mapping, model_name, target_name


@dataclasses.dataclass
class Run:
    """The stages of one model, one target and one seed in the folder `out` (the pipeline's layout)."""

    out: Path
    params: config.Params
    model: str
    target: str
    seed: int
    progress: bool = True

    @classmethod
    def create(cls, out: str | Path, mapping: dict, model: str, target: str, progress: bool = True) -> Run:
        """Write (or check) `out/params.yaml` and load the run's templates."""
        out = Path(out).resolve()
        text = yaml.safe_dump(mapping, sort_keys=True)  # as Snakemake writes its params file
        recorded = out / "params.yaml"
        if recorded.exists() and read_text(recorded) != text:
            raise InputError(f"{out} holds a run with other params ({recorded}); use another --out, or delete it")
        params = config.from_mapping(mapping, SCHEMA, source=str(recorded))
        user_facts.register_templates(params.targets)
        for key in ("facts", "controls"):  # a bad row stops now, not after the data and the model
            if params.targets[target].get(key):
                user_facts.read_fact_file(params.targets[target][key])
        out.mkdir(parents=True, exist_ok=True)
        write_text(recorded, text)
        return cls(out, params, model, target, int(mapping["run"]["seeds"][0]), progress)

    # -- where the pipeline's files are, relative to the run folder --
    def path(self, relative: str) -> Path:
        return self.out / relative.format(model=self.model, target=self.target, seed=self.seed)

    @property
    def mask_dir(self) -> Path:
        return self.path("results/masks/{model}/{target}/seed{seed}")

    def _step(self, name: str, done: Path, action) -> None:
        if done.exists():
            log.info("%s: done already (%s)", name, done)
            return
        log.info("%s ...", name)
        action()

    # -- the stages, each after the ones it needs --
    def prepare(self) -> None:
        """Data, splits, the model, its verbalisations and its ControlLM blocks."""
        p, raw, wiki = self.params, self.path("data/raw"), self.path("data/raw/wikitext-2-raw")
        triplets, splits = self.path("data/processed/triplets.parquet"), self.path("data/processed/splits")
        model_dir = self.path("results/models/{model}")
        self._step("fetch_data", raw / "manifest.json", lambda: fetch_from_params(p, raw))
        self._step(
            "extract_triplets",
            triplets,
            lambda: extract_triplets(p, raw_dir=raw, facts_table=FACTS_TABLE, out=triplets),
        )
        self._step(
            "split_controls",
            splits / self.target / "summary.json",
            lambda: split_targets(p, triplets=triplets, raw=raw, out=splits / self.target, target=self.target),
        )
        self._step(
            "prepare_model",
            model_dir / "config.json",
            lambda: prepare_from_params(
                p, model=self.model, out=model_dir, splits_dir=splits, text=wiki / "wiki.valid.raw"
            ),
        )
        verbalized = self.path("results/verbalized/{model}/{target}.parquet")
        self._step(
            "verbalize",
            verbalized,
            lambda: verbalize_facts(p, model_dir=model_dir, facts=[splits / self.target], out=verbalized),
        )
        controllm = self.path("results/controllm/{model}")
        self._step(
            "tokenize_controllm",
            controllm / "test.safetensors",
            lambda: write_controllm(
                model_dir, wiki / f"wiki.{p.controllm.train_text}.raw", wiki / "wiki.test.raw", controllm, p
            ),
        )

    def _inputs(self) -> dict[str, Path]:
        return {
            "model_dir": self.path("results/models/{model}"),
            "verbalized": self.path("results/verbalized/{model}/{target}.parquet"),
            "splits_dir": self.path("data/processed/splits/{target}"),
            "controllm_dir": self.path("results/controllm/{model}"),
        }

    def discover(self) -> Path:
        """The mask (resumes a killed discovery from its checkpoint); returns mask.safetensors."""
        self.prepare()
        if not (self.mask_dir / "metrics.json").exists():
            discover_mask(
                self.params,
                model=self.model,
                target=self.target,
                seed=self.seed,
                out_dir=self.mask_dir,
                progress=self.progress,
                **self._inputs(),
            )
        return self.mask_dir / "mask.safetensors"

    def evaluate(self) -> Path:
        """The ablation evaluation on the test splits; returns its metrics.json."""
        mask = self.discover()
        out = self.path("results/eval/{model}/{target}/seed{seed}")
        self._step(
            "evaluate_ablation",
            out / "metrics.json",
            lambda: evaluate_mask(
                self.params,
                model=self.model,
                target=self.target,
                seed=self.seed,
                mask=mask,
                out=out / "metrics.json",
                headline_out=out / "headline.json",
                facts_out=out / "facts.parquet",
                **self._inputs(),
            ),
        )
        return out / "metrics.json"

    def robustness(self) -> Path:
        """Held-out facts and wordings, in context, readouts, quantization, relearning; returns robustness.json."""
        mask = self.discover()
        out = self.path("results/robustness/{model}/{target}/seed{seed}")
        inputs = self._inputs()
        self._step(
            "evaluate_robustness",
            out / "robustness.json",
            lambda: evaluate_robustness(
                self.params,
                model=self.model,
                target=self.target,
                seed=self.seed,
                model_dir=inputs["model_dir"],
                mask=mask,
                triplets=self.path("data/processed/triplets.parquet"),
                splits_root=self.path("data/processed/splits"),
                verbalized_root=self.path("results/verbalized/{model}"),
                controllm_dir=inputs["controllm_dir"],
                out_dir=out,
            ),
        )
        return out / "robustness.json"

    def export(self, keep: str | None = None) -> Path:
        """The model without the subnetwork (or with only it), with its model card; returns the folder."""
        headline = self.evaluate().with_name("headline.json")
        robustness = self.robustness().with_name("headline.json")
        out = self.path("results/remaining/{model}/{target}/seed{seed}")
        self._step(
            "export_remaining",
            out / "config.json",
            lambda: export_from_params(
                self.params,
                model_dir=self.path("results/models/{model}"),
                mask=self.mask_dir / "mask.safetensors",
                out=out,
                keep=keep,
                headline=headline,
                robustness=robustness,
            ),
        )
        return out


@dataclasses.dataclass(frozen=True)
class Discovery:
    """What `discover` returns: the mask file, its folder (meta.json, train_log.csv) and its metrics."""

    mask: Path
    metrics: dict
    run: Run


def discover(
    model: str,
    facts: str | Path,
    controls: str | Path | None = None,
    *,
    templates: str | Path | None = None,
    out: str | Path = "knowsubnet-run",
    target: str | None = None,
    seed: int = 0,
    params: Iterable[str | Path] = (),
    progress: bool = False,
    **overrides: Any,
) -> Discovery:
    """Find the knowledge-critical subnetwork of `model` for the facts in `facts`, in the folder `out`.

    `model`: a Hugging Face folder, a .gguf file, a hub id, or a name under params `models`
    (`tiny-gpt2`: the tiny GPT-2, trained here on your facts). `facts`, `controls`: CSV, JSONL or
    parquet files of head, relation, tail; `templates`: a YAML of templates per relation
    (`data.user_facts`). `params`: params YAML files merged over the packaged defaults;
    `overrides`: sections to merge last, e.g. `train={"steps": 50}`.
    """
    mapping, model_name, target_name = build_params(
        model,
        facts,
        templates=templates,
        controls=controls,
        target=target,
        seed=seed,
        params_files=params,
        overrides=overrides,
    )
    run = Run.create(out, mapping, model_name, target_name, progress=progress)
    mask = run.discover()
    return Discovery(mask, read_json(run.mask_dir / "metrics.json"), run)
