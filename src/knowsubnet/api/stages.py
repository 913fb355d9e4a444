"""The pipeline's stages as commands, `knowsubnet <stage> --params FILE [FILE ...] ...`, each declared once.

A `Stage` names the library function it runs ("module:function"), its command-line arguments (each
filling one keyword of that function) and the params sections it reads. From the declarations come
the subcommands (api.cli), the rules' `section()` params (`stage_sections` in
workflow/rules/common.smk) and dvc.yaml's deps (workflow/dvc_yaml.py: the function's module and what
it imports); tests/unit/api/test_stages.py checks that every rule calls its stage as declared.

This module imports no stage's library module: `run_stage` imports the one it runs, so a stage
command, and the Snakefile reading these declarations, start without loading torch.
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from knowsubnet.core import config
from knowsubnet.core.errors import InputError

DEFAULTS = Path(__file__).resolve().parents[1] / "defaults"  # shipped in the package (symlinks in the repo)
SCHEMA = DEFAULTS / "params.schema.yaml"

# Choices written out, not imported from the library modules (they load torch); a test checks they agree
# with downstream.csqa.MODES, evaluation.export.KEEP and method.combination.COMBINATIONS.
CSQA_MODES = ("head", "lora", "full")
KEEP = ("remaining", "subnetwork")
COMBINATIONS = ("union", "intersection", "majority")


@dataclass(frozen=True)
class Arg:
    """One command-line argument: `parser.add_argument(flag, ...)`, filling the stage function's
    keyword `to` (by default the flag's name, `--model-dir` -> model_dir)."""

    flag: str
    help: str
    type: Callable[[str], Any] = Path
    required: bool = True
    nargs: str | None = None
    default: Any = None
    choices: tuple | None = None
    action: str | None = None  # store_true / store_false: a switch (no value, not required)
    to: str | None = None

    @property
    def dest(self) -> str:
        return self.to or self.flag.lstrip("-").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        if self.action:
            parser.add_argument(self.flag, dest=self.dest, action=self.action, help=self.help)
        else:
            parser.add_argument(
                self.flag,
                dest=self.dest,
                type=self.type,
                required=self.required,
                nargs=self.nargs,
                default=self.default,
                choices=self.choices,
                help=self.help,
                metavar=self.flag.lstrip("-").upper().replace("-", "_"),
            )


@dataclass(frozen=True)
class Stage:
    """A pipeline stage: `run` ("module:function") is called with keywords, one per argument of `args`,
    and `params`, the params of `--params` (load "typed": validated config.Params; "merged": the merged
    mapping, unvalidated, and `schema`; "none": no `--params` at all). `params` lists the params
    sections it reads, as dotted keys; `{wildcard}` is the rule's wildcard (targets.{target})."""

    name: str
    run: str
    doc: str
    params: tuple[str, ...]
    args: tuple[Arg, ...]
    load: Literal["typed", "merged", "none"] = "typed"


# Arguments several stages share.
MODEL = Arg("--model", "model name (the {model} wildcard; a key of params 'models')", type=str)
TARGET = Arg("--target", "target name (the {target} wildcard)", type=str)
SEED = Arg("--seed", "seed (the {seed} wildcard): of the mask's noise and batches, or the mask's", type=int)
MODEL_DIR = Arg("--model-dir", "results/models/<model>")
VERBALIZED = Arg("--verbalized", "results/verbalized/<model>/<target>.parquet")
SPLITS = Arg("--splits", "data/processed/splits/<target>", to="splits_dir")
CONTROLLM = Arg("--controllm", "results/controllm/<model> (train / val / test.safetensors)", to="controllm_dir")
MASK = Arg("--mask", "mask.safetensors (discover_mask's)")
NO_PROGRESS = Arg("--no-progress", "no progress bar", action="store_false", to="progress")
KNOWN = ("known", "verbalize.scored_positions")  # which facts count as known: read by every stage scoring facts

STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in [
        Stage(
            "build_facts_table",
            "knowsubnet.data.facts_table:build_facts_table",
            load="none",
            params=(),
            doc="Build the in-repo facts table data/facts/conceptnet_facts.tsv from the local data mirror. Run "
            "once by a maintainer, from the repository root (not a pipeline stage; the table is committed).",
            args=(
                Arg(
                    "--mirror",
                    "the local data mirror (layout of ../shared/data)",
                    required=False,
                    default=Path("../shared/data"),
                ),
                Arg("--out", "the table to write", required=False, default=Path("data/facts/conceptnet_facts.tsv")),
            ),
        ),
        Stage(
            "fetch_data",
            "knowsubnet.data.fetch:fetch_from_params",
            doc="Copy the raw datasets from the local mirror (or download them) into data/raw. triplets.sources "
            "and controllm.train_text decide whether WordNet's noun files and WikiText-2 train are fetched.",
            params=("data", "triplets.lama_path", "triplets.sources", "controllm.train_text"),
            args=(Arg("--out", "the raw data folder", required=False, default=Path("data/raw"), to="out_dir"),),
        ),
        Stage(
            "extract_triplets",
            "knowsubnet.data.triplets:extract_triplets",
            doc="Read every selected fact source into data/processed/triplets.parquet.",
            params=("triplets",),
            args=(
                Arg("--raw", "fetch_data's output folder", required=False, default=Path("data/raw"), to="raw_dir"),
                Arg(
                    "--facts",
                    "the in-repo facts table (source 'builtin')",
                    required=False,
                    default=DEFAULTS / "conceptnet_facts.tsv",
                    to="facts_table",
                ),
                Arg("--out", "the triplets parquet", required=False, default=Path("data/processed/triplets.parquet")),
            ),
        ),
        Stage(
            "split_controls",
            "knowsubnet.data.split_stage:split_targets",
            doc="TargetKG / ControlKG train/val/test parquet files for one target (--target), or for every target "
            "in params. With split.controlkg: paper, the paper's ControlKG files are read from --raw.",
            params=("targets.{target}", "split"),
            args=(
                Arg(
                    "--triplets",
                    "extract_triplets' output",
                    required=False,
                    default=Path("data/processed/triplets.parquet"),
                ),
                Arg("--raw", "fetch_data's output folder", required=False, default=Path("data/raw")),
                Arg("--target", "one target's name: --out is then that target's folder", type=str, required=False),
                Arg("--out", "the splits folder", required=False, default=Path("data/processed/splits")),
            ),
        ),
        Stage(
            "prepare_model",
            "knowsubnet.models.prepare:prepare_from_params",
            doc="A local Hugging Face model directory and provenance.json for one model. The tiny model "
            "(source tiny) trains on the facts of run.targets; pretrained sources ignore the fact arguments.",
            params=("models.{model}", "run.targets"),
            args=(
                MODEL,
                Arg("--out", "results/models/<model>"),
                Arg("--facts", "fact parquet files (tiny model)", required=False, nargs="+", default=[]),
                Arg("--splits-dir", "data/processed/splits: facts of run.targets (tiny model)", required=False),
                Arg("--text", "ordinary text for the tiny model (wiki.valid.raw)", required=False),
            ),
        ),
        Stage(
            "tokenize_controllm",
            "knowsubnet.models.controllm:write_controllm",
            doc="WikiText-2 as ControlLM blocks of token ids, with one model's tokenizer. Writes --out/train, val "
            "(the last blocks of the training text, never trained on) and test.safetensors, and meta.json.",
            params=("controllm",),
            args=(
                MODEL_DIR,
                Arg("--train-text", "wiki.valid.raw or wiki.train.raw (controllm.train_text)"),
                Arg("--test-text", "wiki.test.raw"),
                Arg("--out", "results/controllm/<model>"),
            ),
        ),
        Stage(
            "verbalize",
            "knowsubnet.scoring.templates:verbalize_facts",
            doc="The best template per fact for one model (lowest tail perplexity). One row per fact with uuid, "
            "head, rel, tail, template_id, prompt, tail_text, tail_ppl.",
            params=("verbalize",),
            args=(
                MODEL_DIR,
                Arg(
                    "--splits",
                    "split folders or parquet files (their union; triplets.parquet too)",
                    nargs="+",
                    to="facts",
                ),
                Arg("--out", "the output parquet"),
            ),
        ),
        Stage(
            "discover_mask",
            "knowsubnet.method.discover:discover",
            doc="Learn the knowledge-critical subnetwork mask of one (model, target, seed). Writes "
            "--out-dir/mask.safetensors, meta.json, train_log.csv, metrics.json; a killed run resumes.",
            params=("mask", "train", *KNOWN),
            args=(
                MODEL,
                TARGET,
                SEED,
                MODEL_DIR,
                VERBALIZED,
                SPLITS,
                CONTROLLM,
                Arg("--out-dir", "results/masks/<model>/<target>/seed<seed>"),
                NO_PROGRESS,
            ),
        ),
        Stage(
            "evaluate_ablation",
            "knowsubnet.evaluation.ablation:evaluate_mask",
            doc="Original / removed / random-removed / kept metrics for one mask. report.bars: the headline's verdict.",
            params=("eval", *KNOWN, "report.bars"),
            args=(
                MODEL,
                TARGET,
                SEED,
                MODEL_DIR,
                VERBALIZED,
                SPLITS,
                CONTROLLM,
                MASK,
                Arg("--out", "metrics.json to write"),
                Arg(
                    "--headline",
                    "headline.json to write: the few numbers of `dvc metrics show`, with the verdict",
                    required=False,
                    to="headline_out",
                ),
                Arg(
                    "--facts",
                    "facts.parquet to write: per test fact its NLL and rank per variant",
                    required=False,
                    to="facts_out",
                ),
            ),
        ),
        Stage(
            "evaluate_robustness",
            "knowsubnet.evaluation.robustness:evaluate_robustness",
            doc="Removed, or only hidden, for one (model, target, seed). Held-out facts and wordings, in context, "
            "multiple choice, the logit lens and a linear probe, quantization, relearning and specificity "
            "(the other run.targets): --out-dir/robustness.json, sentences.parquet, headline.json.",
            params=(
                "robustness",
                *KNOWN,
                "eval.dtype",
                "eval.random_draws",
                "train.targetkg_templates",
                "verbalize.other_heads",
                "run.targets",
            ),
            args=(
                MODEL,
                TARGET,
                SEED,
                MODEL_DIR,
                MASK,
                Arg("--triplets", "data/processed/triplets.parquet"),
                Arg("--splits-root", "data/processed/splits"),
                Arg("--verbalized-root", "results/verbalized/<model>"),
                CONTROLLM,
                Arg("--out-dir", "results/robustness/<model>/<target>/seed<seed>"),
            ),
        ),
        Stage(
            "evaluate_val_wordings",
            "knowsubnet.evaluation.val_wordings:evaluate_val_wordings",
            doc="The held-out-wording check on validation, for the sweep's choice: the known validation facts in "
            "their relations' validation wordings (never the test's), the share of sentences the removal "
            "suppresses beside a random removal's, the ControlKG validation facts in the same wordings, and "
            "relearning on the ControlLM validation text (the share of the validation facts' removal it closes).",
            params=(
                "robustness.max_facts",
                "robustness.suppressed_ratio",
                "robustness.bootstrap",
                "robustness.seed",
                "robustness.batch_size",
                "robustness.device",
                *KNOWN,
                "eval.dtype",
                "eval.random_draws",
                "verbalize.other_heads",
                "robustness.relearn",
            ),
            args=(
                MODEL_DIR,
                MASK,
                SPLITS,
                VERBALIZED,
                Arg("--controllm-val", "results/controllm/<model>/val.safetensors (the relearning check's text)"),
                Arg("--out", "results/sweep/<model>/<target>/<point>/seed<seed>/eval/val_wordings.json"),
            ),
        ),
        Stage(
            "combine_seeds",
            "knowsubnet.evaluation.ablation:combine_seeds",
            doc="Union / intersection / majority of a target's seed masks, and their metrics. Writes "
            "<out-masks>/<how>.safetensors and <out-eval>/<how>.json.",
            params=("eval", *KNOWN),
            args=(
                MODEL,
                TARGET,
                Arg("--masks", "the seeds' mask.safetensors", nargs="+"),
                MODEL_DIR,
                VERBALIZED,
                SPLITS,
                CONTROLLM,
                Arg("--out-masks", "results/combined/<model>/<target>"),
                Arg("--out-eval", "results/eval/<model>/<target>/combined"),
                Arg(
                    "--combinations",
                    "which combinations",
                    type=str,
                    required=False,
                    nargs="+",
                    default=list(COMBINATIONS),
                    choices=COMBINATIONS,
                ),
            ),
        ),
        Stage(
            "remove_baseline",
            "knowsubnet.method.baselines:run_baseline",
            doc="Another method's removal of one (model, target, seed)'s knowledge. Writes "
            "--out-dir/removal.safetensors and meta.json; the finetuning methods resume from their checkpoint.",
            params=(
                "baselines.{baseline}",
                "baselines.device",
                *KNOWN,
                "mask.top_k_blocks",
                "train.controlkg_known_only",
                "train.targetkg_templates",
            ),
            args=(
                Arg(
                    "--method",
                    "the method, a baseline of knowsubnet.method.registry (the {baseline} wildcard)",
                    type=str,
                ),
                MODEL,
                TARGET,
                SEED,
                MODEL_DIR,
                VERBALIZED,
                SPLITS,
                CONTROLLM,
                Arg("--mask", "the learned mask of the same seed (the methods sized by it)", required=False),
                Arg("--out-dir", "results/baselines/<model>/<target>/<method>/seed<seed>"),
                NO_PROGRESS,
            ),
        ),
        Stage(
            "finetune_csqa",
            "knowsubnet.downstream.csqa:run_stage",
            doc="CommonsenseQA finetuning of the original / remaining / random-removed models. known and "
            "robustness.suppressed_ratio: which removed facts were known and suppressed.",
            params=("csqa", "targets.{target}", *KNOWN, "robustness.suppressed_ratio"),
            args=(
                MODEL,
                TARGET,
                Arg("--seed", "mask seed (the finetuning seeds are csqa.seeds)", type=int),
                Arg("--mode", "finetuning mode", type=str, choices=CSQA_MODES),
                MODEL_DIR,
                MASK,
                Arg("--triplets", "data/processed/triplets.parquet"),
                SPLITS,
                VERBALIZED,
                Arg("--csqa-dir", "folder with {train,dev}_rand_split.jsonl"),
                Arg("--out", "results JSON to write"),
            ),
        ),
        Stage(
            "export_remaining",
            "knowsubnet.evaluation.export:export_from_params",
            doc="Export the remaining model (subnetwork removed), or the subnetwork alone, as a Hugging Face "
            "directory with its model card (README.md) and provenance.json.",
            params=("export.keep", "targets.{target}", "triplets.sources", "report.bars"),
            args=(
                MODEL_DIR,
                MASK,
                Arg("--out", "directory to write"),
                Arg(
                    "--keep",
                    "remaining: remove the subnetwork; subnetwork: keep only it in masked layers "
                    "(default: params export.keep)",
                    type=str,
                    required=False,
                    choices=KEEP,
                ),
                Arg("--headline", "evaluate_ablation's headline.json, for the model card", required=False),
                Arg("--robustness", "evaluate_robustness's headline.json, for the model card", required=False),
                Arg(
                    "--push-to-hub",
                    "then upload the folder to this Hugging Face model repo (network, a write "
                    "token; the pipeline never does)",
                    type=str,
                    required=False,
                    to="hub_repo",
                ),
                Arg("--public", "with --push-to-hub: a public repo (default private)", action="store_true"),
            ),
        ),
        Stage(
            "report",
            "knowsubnet.report.build:build_report",
            doc="Tables, figures and report.md from the metrics, masks and training logs. The whole params are "
            "shown; with baselines, the section comparing them with the learned mask.",
            params=("report",),
            args=(
                Arg(
                    "--metrics",
                    "metrics JSON files (per seed, and seed combinations)",
                    nargs="*",
                    default=[],
                    required=False,
                    to="metrics_paths",
                ),
                Arg(
                    "--masks",
                    "mask.safetensors files (per seed)",
                    nargs="*",
                    default=[],
                    required=False,
                    to="mask_paths",
                ),
                Arg("--logs", "train_log.csv files", nargs="*", default=[], required=False, to="log_paths"),
                Arg(
                    "--metas",
                    "discovery meta.json files (trade-off curves)",
                    nargs="*",
                    default=[],
                    required=False,
                    to="meta_paths",
                ),
                Arg(
                    "--csqa",
                    "finetune_csqa results (results/csqa/<model>/<target>/seed<seed>/<mode>.json)",
                    nargs="*",
                    default=[],
                    required=False,
                    to="csqa_paths",
                ),
                Arg(
                    "--robustness",
                    "evaluate_robustness results (…/seed<seed>/robustness.json)",
                    nargs="*",
                    default=[],
                    required=False,
                    to="robustness_paths",
                ),
                Arg(
                    "--baselines",
                    "remove_baseline meta.json files",
                    nargs="*",
                    default=[],
                    required=False,
                    to="baseline_meta_paths",
                ),
                Arg(
                    "--baseline-metrics",
                    "evaluate_baseline metrics (…/seed<seed>/eval/metrics.json)",
                    nargs="*",
                    default=[],
                    required=False,
                    to="baseline_metrics_paths",
                ),
                Arg(
                    "--baseline-robustness",
                    "baseline_robustness results (…/robustness/robustness.json)",
                    nargs="*",
                    default=[],
                    required=False,
                    to="baseline_robustness_paths",
                ),
                Arg("--out-dir", "the results folder", required=False, default=Path("results")),
                Arg(
                    "--models-root",
                    "model directories (config.json, provenance.json); default <out-dir>/models",
                    required=False,
                ),
            ),
        ),
        Stage(
            "sweep_point",
            "knowsubnet.method.sweep:write_point_overlay",
            load="merged",
            doc="One sweep point's params overlay (sweep.points.<point>.set) as a file. The point's stages merge "
            "it after the run's params; checked first: merged over the params, it must validate.",
            params=("sweep.points.{point}",),
            args=(
                Arg("--point", "the point's name (the {point} wildcard)", type=str),
                Arg("--out", "results/sweep/points/<point>.yaml"),
            ),
        ),
        Stage(
            "sweep_select",
            "knowsubnet.report.sweep:sweep_from_params",
            doc="The search's table (docs/SEARCH.md). Every sweep point's validation numbers and cost, the point "
            "kept per method x model x target x seed on validation only, the kept points' test numbers, and the "
            "kept points pooled over seeds with intervals and their differences from the mask (comparison.md).",
            params=("sweep", "report.bars", "report.dpi", "report.bootstrap"),
            args=(
                Arg("--names", "each point's name, in the order of --metas", type=str, nargs="+"),
                Arg("--metas", "each point's meta.json", nargs="+"),
                Arg("--headlines", "each point's test headline.json (read for the kept points only)", nargs="+"),
                Arg("--facts", "each point's test facts.parquet (read for the kept points only)", nargs="+"),
                Arg("--wordings", "each point's val_wordings.json (evaluate_val_wordings)", nargs="+"),
                Arg("--out-dir", "results/sweep"),
            ),
        ),
        Stage(
            "sweep_goals",
            "knowsubnet.report.goals:goals_from_params",
            doc="The goal table (docs/SEARCH.md): every robustness result of sweep.robustness beside the removal "
            "goal (report.bars, report.goals), with 95 % intervals: results/sweep/goals.csv, goals.md.",
            params=("report.bars", "report.goals"),
            args=(
                Arg("--names", "each result's point name, in the order of --results", type=str, nargs="*"),
                Arg("--results", "each point's robustness.json", nargs="*"),
                Arg("--out-dir", "results/sweep"),
            ),
        ),
    ]
}


def add_parser(commands: argparse._SubParsersAction, stage: Stage) -> None:
    """The stage's subcommand, from its declaration."""
    reads = f" Params: {', '.join(stage.params)}." if stage.params else ""
    sub = commands.add_parser(stage.name, help=stage.doc.split(". ")[0], description=stage.doc + reads)
    if stage.load != "none":
        sub.add_argument("--params", nargs="+", required=True, metavar="YAML", help="params files, merged in order")
        sub.add_argument(
            "--check-run",
            type=Path,
            metavar="FILE",
            help=f"stop unless FILE's '{RUN_MARK.strip()}' line records these params' run "
            "(dvc.yaml's commands pass dvc.yaml)",
        )
    for arg in stage.args:
        arg.add_to(sub)


def run_stage(stage: Stage, args: argparse.Namespace) -> None:
    """Load the params, import the stage's library module, call its function with the arguments."""
    kwargs = {arg.dest: getattr(args, arg.dest) for arg in stage.args}
    if stage.load == "typed":
        kwargs["params"] = load_params(args.params)
    elif stage.load == "merged":
        kwargs |= {"params": config.merge_files(args.params), "schema": SCHEMA}
    if stage.load != "none" and args.check_run:
        check_recorded_run(config.merge_files(args.params), args.check_run)
    module, function = stage.run.split(":")
    getattr(importlib.import_module(module), function)(**kwargs)


def load_params(paths: list[str]) -> config.Params:
    """The params files merged in order, validated once and typed; the relations of the targets'
    templates files registered, for every stage that verbalises (data.user_facts)."""
    from knowsubnet.data import user_facts  # here: the Snakefile imports this module, and user_facts loads pandas

    params = config.load(paths, SCHEMA)
    user_facts.register_templates(params.targets)
    return params


# -- a generated file records the params it was written for -----------------------------------------------

# The params that decide which stages and inputs exist: dvc.yaml's header records them (workflow/dvc_yaml.py),
# and each of its commands (`--check-run dvc.yaml`) stops when params.yaml has others (edited by hand, or
# `dvc exp run -S run.targets=...`), which would run the wrong stages.
RUN_KEYS = (("run",), ("csqa", "mask_seeds"), ("csqa", "modes"))
RUN_MARK = "# generated for: "


def generated_for(mapping: dict) -> str:
    """The values of RUN_KEYS in `mapping`, as one canonical JSON line."""
    values = {}
    for keys in RUN_KEYS:
        value = mapping
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        values[".".join(keys)] = value
    return json.dumps(values, sort_keys=True)


def check_recorded_run(mapping: dict, path: Path) -> None:
    """Stop when `path`'s RUN_MARK line records another run than `mapping`'s (a file without one: no check)."""
    lines = path.read_text().splitlines() if path.exists() else []
    recorded = next((line[len(RUN_MARK) :].strip() for line in lines if line.startswith(RUN_MARK)), None)
    if recorded is not None and recorded != generated_for(mapping):
        raise InputError(
            f"{path} was generated for {recorded}, but the params have {generated_for(mapping)}: "
            f"run `make {path.name}` (or `make params`) to regenerate it"
        )
