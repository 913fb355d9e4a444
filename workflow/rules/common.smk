# Shared by every rule: the effective params file handed to the stages, and the run's wildcards.
import hashlib
import json
import os
import re
import sys
from pathlib import Path

import yaml

from knowsubnet.api.stages import STAGES  # the stage commands' declarations; no torch either
from knowsubnet.method import registry as removal_methods  # no torch: names and kinds only

# Shell commands call `knowsubnet <stage>` (knowsubnet.api.stages): the folder of the interpreter running
# Snakemake (the project's virtual environment, which installs that command) comes first on PATH, here and
# in every job (with `--sdm conda`, the rule's conda env comes first).
# Lint "environment variable PATH used but not asserted": deliberate; PATH is only prepended to, never
# required, and jobs on a cluster run this file again, so they prepend their own interpreter.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def _effective_params_file():
    """Write Snakemake's merged config once, content-addressed, so the stages see exactly it."""
    text = yaml.safe_dump(config, sort_keys=True)
    path = Path(".knowsubnet") / f"params-{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # several snakemake processes may write it at once
        tmp.write_text(text)
        tmp.replace(path)
    return str(path)


# Lint "shell command directly uses variable PARAMS": deliberate. PARAMS names the merged params file,
# and its name changes with every param; as a rule's `params:` entry it would re-run every rule on any
# edit. Instead, the params entries of each job name the sections it reads (`section(...)`).
PARAMS = _effective_params_file()
MODELS = config["run"]["models"]
TARGETS = config["run"]["targets"]
SEEDS = config["run"]["seeds"]
BASELINES = config["run"]["baselines"]
COMBINATIONS = ["union", "intersection", "majority"]  # of a target's seed masks
# The baselines by kind (knowsubnet.method.registry): which recipe runs each, prune_baseline or unlearn_baseline
SIZED_BY_MASK = removal_methods.names(removal_methods.SIZED_BY_MASK)
UNLEARNING = removal_methods.names(removal_methods.FINETUNING)

for _target in TARGETS:
    if _target not in config["targets"]:
        raise ValueError(f"params key 'run.targets': '{_target}' is not defined under 'targets'")
for _model in MODELS:
    if _model not in config["models"]:
        raise ValueError(f"params key 'run.models': '{_model}' is not defined under 'models'")

wildcard_constraints:
    model="|".join(map(re.escape, config["models"])),
    target="|".join(map(re.escape, config["targets"])),
    seed=r"\d+",
    baseline="|".join(removal_methods.baselines()),


class Section(str):
    """Canonical JSON of a params section (what Snakemake compares for `--rerun-triggers params`),
    remembering which key it came from (`workflow/dvc_yaml.py` turns it into a DVC `params:` entry)."""

    key: str


def section(*keys):
    """A params section as a rule's `params:` entry, so that editing it re-runs the rule. A key
    missing from the config reads as null (optional keys; the DVC generator's ${item.x} names)."""
    value = config
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    out = Section(json.dumps(value, sort_keys=True))
    out.key = ".".join(map(str, keys))
    return out


def stage_sections(stage, omit=(), **values):
    """The `section(...)` params of `knowsubnet <stage>`, one per params key its declaration reads
    (knowsubnet.api.stages), so the keys are written once (`params: **stage_sections("discover_mask")`).
    A `{name}` in a key is the job's wildcard, or `values[name]` (a rule's fixed value); keys in
    `omit` are left to the rule (one it reads only sometimes); entry names are the keys with `.` -> `_`."""
    entries = {}
    for key in STAGES[stage].params:
        if key in omit:
            continue
        parts = [values.get(part[1:-1], part) if part.startswith("{") else part for part in key.split(".")]
        name = "_".join(part.strip("{}") for part in key.split("."))
        if any(part.startswith("{") for part in parts):
            entries[name] = _wildcard_section(parts)
        else:
            entries[name] = section(*parts)
    return entries


def _wildcard_section(parts):
    """A params function: the section whose `{wildcard}` parts the job's wildcards fill."""
    return lambda wildcards: section(*[getattr(wildcards, p[1:-1]) if p.startswith("{") else p for p in parts])


# Hints for the dvc.yaml generator (workflow/dvc_yaml.py); Snakemake ignores them.
DVC_MATRIX = {}  # name of a job's recipe -> {wildcard: list or ${params.key}}, where `run.<wildcard>s` does not apply
DVC_PLOTS = []  # dvc.yaml's top-level plot definitions
DVC_STAGES = []  # recipes written to dvc.yaml even when the default target needs none of their outputs
def whole_dir(path, directory):
    """`path` is the marker file of a `directory` written as a whole: DVC tracks the directory."""
    return flag(path, "dvc_dir", directory)


def metrics_file(path):
    """A small JSON of headline numbers: a DVC metric (`dvc metrics show / diff`)."""
    return flag(path, "dvc_metrics")


def plots_file(path, x, y):
    """A CSV to plot (`dvc plots show`)."""
    return flag(path, "dvc_plots", {"x": x, "y": y})


def split_files(target):
    return expand("data/processed/splits/{target}/{kind}_{part}.parquet", target=target,
                  kind=["targetkg", "controlkg"], part=["train", "val", "test"])


def split_summary(target):
    return f"data/processed/splits/{target}/summary.json"


# -- inputs that depend on params (used by the rule files) --

def _optional_raw():
    """Files fetched only when the params need them (knowsubnet.fetch.optional_files)."""
    out = {}
    if "wordnet" in config["triplets"]["sources"]:
        out["wordnet"] = ["data/raw/wordnet-3.0/data.noun", "data/raw/wordnet-3.0/index.noun"]
    if config["controllm"]["train_text"] == "train":
        out["wiki_train"] = "data/raw/wikitext-2-raw/wiki.train.raw"
    return out


def user_target_files(wildcards):
    """A fact-file target's own files (facts, templates, controls; docs/YOUR_FACTS.md): editing one
    re-runs its split. dvc.yaml's split stage is one matrix over run.targets, so there (the wildcard
    is a placeholder) it depends on every run target's files."""
    names = [wildcards.target] if wildcards.target in config["targets"] else TARGETS
    specs = [config["targets"][name] for name in names]
    return sorted({spec[key] for spec in specs if "facts" in spec and not {"concept", "wordnet"} & set(spec)
                   for key in ("facts", "templates", "controls") if spec.get(key)})


def is_tiny(model):
    """A model trained here. A name not in the config is the DVC generator's ${item.model}, which
    stands for every model of the run: it gets the tiny model's inputs if any run model is tiny."""
    if model not in config["models"]:
        return any(is_tiny(m) for m in MODELS)
    return config["models"][model]["source"] == "tiny"


def model_inputs(wildcards):
    """The tiny model is trained on the facts of the run's splits; pretrained models need nothing."""
    if not is_tiny(wildcards.model):
        return {}
    return {"splits": [f for t in TARGETS for f in split_files(t)],
            "text": "data/raw/wikitext-2-raw/wiki.valid.raw"}


# Downstream: the CSQA-linked targets of the run (selector `csqa:`) and their finetuning runs.
CSQA_TARGETS = [t for t in TARGETS if isinstance(config["targets"][t], dict) and "csqa" in config["targets"][t]]
CSQA_MODES = config["csqa"]["modes"]
CSQA_SEEDS = config["csqa"]["mask_seeds"] or SEEDS  # masks finetuned; csqa.seeds: finetuning
for _seed in CSQA_SEEDS if CSQA_TARGETS else []:  # only read when a CSQA-linked target runs
    if _seed not in SEEDS:
        raise ValueError(f"params key 'csqa.mask_seeds': seed {_seed} is not in run.seeds {SEEDS}")


# Export (workflow/rules/discovery.smk): the default target exports these seeds' masks.
EXPORT_SEEDS = config["export"]["seeds"]  # within run.seeds (core.config.validate)


def export_results():
    return expand("results/remaining/{model}/{target}/seed{seed}", model=MODELS, target=TARGETS, seed=EXPORT_SEEDS)


def csqa_results():
    return expand("results/csqa/{model}/{target}/seed{seed}/{mode}.json", model=MODELS, target=CSQA_TARGETS,
                  seed=CSQA_SEEDS, mode=CSQA_MODES)


# -- baselines (workflow/rules/baselines.smk) --

def baseline_results(name):
    """Every baseline run's file `name` (meta.json, eval/metrics.json, robustness/robustness.json)."""
    return expand("results/baselines/{model}/{target}/{baseline}/seed{seed}/{name}", model=MODELS, target=TARGETS,
                  baseline=BASELINES, seed=SEEDS, name=name)


# -- the search on validation (workflow/rules/sweep.smk; docs/SEARCH.md) --

SWEEP_POINTS = config["sweep"]["points"]
SWEEP_METHODS = removal_methods.names()  # one rule each (the mask's, then every baseline's)


def sweep_points(method=None):
    """The sweep's point names, in definition order (of one method)."""
    return [name for name, point in SWEEP_POINTS.items() if method is None or point["method"] == method]


def sweep_point_regex(names):
    return "|".join(map(re.escape, names)) or "(?!)"  # no point: the rule matches nothing


def sweep_runs():
    """(name, meta.json, test headline.json, test facts.parquet, val_wordings.json) of every point, the run's
    own mask (`preset`) first, per run model x target x seed: sweep_select's inputs, in the order of its --names."""
    runs = []
    for model in MODELS:
        for target in TARGETS:
            for seed in SEEDS:
                evaluation = f"results/eval/{model}/{target}/seed{seed}"
                runs.append(("preset", f"results/masks/{model}/{target}/seed{seed}/meta.json",
                             f"{evaluation}/headline.json", f"{evaluation}/facts.parquet",
                             f"{evaluation}/val_wordings.json"))
                for name in sweep_points():
                    folder = f"results/sweep/{model}/{target}/{name}/seed{seed}"
                    runs.append((name, f"{folder}/meta.json", f"{folder}/eval/headline.json",
                                 f"{folder}/eval/facts.parquet", f"{folder}/eval/val_wordings.json"))
    return runs


def robustness_inputs(mask):
    """evaluate_robustness's inputs for one removal file (the mask's, a baseline's or a sweep point's)."""
    return dict(
        model="results/models/{model}/config.json",
        mask=mask,
        triplets="data/processed/triplets.parquet",
        # every run target's splits and verbalisations: the removal is also scored on the others' facts
        splits=expand("data/processed/splits/{target}/{kind}_{part}.parquet", target=TARGETS,
                      kind=["targetkg", "controlkg"], part=["train", "val", "test"]),
        verbalized=expand("results/verbalized/{{model}}/{target}.parquet", target=TARGETS),
        # relearning on unrelated text (train blocks); ControlLM after quantization (test blocks)
        controllm=expand("results/controllm/{{model}}/{part}.safetensors", part=["train", "test"]),
        split_summary="data/processed/splits/{target}/summary.json",  # how the TargetKG was held out
    )


def sweep_robustness_points(kind=None):
    """The points of sweep.robustness that are sweep points (`preset` is the run's own robustness rule), of
    one kind: "mask" (the learned mask's recipes) or "baseline" (every other method)."""
    names = [name for name in config["sweep"]["robustness"] if name in SWEEP_POINTS]
    if kind is None:
        return names
    return [name for name in names if (SWEEP_POINTS[name]["method"] == "mask") == (kind == "mask")]


def sweep_robustness_runs():
    """(name, robustness.json) of every point of sweep.robustness per run model x target x seed, in
    params order: sweep_goals' inputs, in the order of its --names."""
    runs = []
    for model in MODELS:
        for target in TARGETS:
            for seed in SEEDS:
                for name in config["sweep"]["robustness"]:
                    folder = (f"results/robustness/{model}/{target}/seed{seed}" if name == "preset"
                              else f"results/sweep/{model}/{target}/{name}/seed{seed}/robustness")
                    runs.append((name, f"{folder}/robustness.json"))
    return runs


# -- a target path on the command line with an undefined name (called at the end of the Snakefile) --

NAMED_WILDCARDS = {"model": "models", "target": "targets"}  # wildcard -> the params section defining its names


def _output_regex(pattern):
    """A rule's output pattern as a regex in which every wildcard matches any one path segment."""
    from snakemake.io import strip_wildcard_constraints

    pattern, parts, seen, pos = strip_wildcard_constraints(str(pattern)), [], set(), 0
    for found in re.finditer(r"\{(\w+)\}", pattern):
        name = found.group(1)
        parts += [re.escape(pattern[pos:found.start()]), f"(?P={name})" if name in seen else f"(?P<{name}>[^/]+)"]
        seen.add(name)
        pos = found.end()
    return re.compile("".join(parts) + re.escape(pattern[pos:]))


def undefined_name(path):
    """For a path some rule would write but for its {model} or {target} name, which the params do
    not define: one line saying so and listing the defined names; else None (Snakemake decides)."""
    path = os.path.normpath(path)
    matches = [m.groupdict() for rule in workflow.rules for out in rule.output
               if (m := _output_regex(out).fullmatch(path))]
    undefined = [[(w, v) for w, v in m.items() if w in NAMED_WILDCARDS and v not in config[NAMED_WILDCARDS[w]]]
                 for m in matches]
    if not undefined or not all(undefined):  # no rule writes it, or one does with defined names
        return None
    wildcard, name = undefined[0][0]
    section = NAMED_WILDCARDS[wildcard]
    return (f"{path}: {wildcard} {name!r} is not defined under '{section}' in the params; "
            f"defined: {', '.join(sorted(config[section]))}")


def check_requested_paths(argv):
    """Stop with one line (exit 2) when a path asked for on the command line names an undefined
    model or target, instead of Snakemake's MissingRuleException."""
    for arg in argv:
        problem = None if arg.startswith("-") else undefined_name(arg)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(2)
