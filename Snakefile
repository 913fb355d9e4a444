# knowsubnet: data -> model -> mask discovery -> ablation evaluation -> report.
#
#   snakemake --cores 2                                        # params.yaml (tiny preset + local mirror)
#   snakemake --cores 2 --configfile config/presets/demo.yaml  # another preset
#   snakemake --cores 2 --config train__steps=10               # one param (docs/ENVIRONMENT.md)
#   snakemake --profile workflow/profiles/slurm --configfile config/presets/paper.yaml
#
# Rules live in workflow/rules/*.smk; each calls one stage command, `knowsubnet <stage>` (knowsubnet.api.stages).
# Model stages use one thread per job: on a few cores, jobs side by side beat threads per job
# (the slurm profile sets more threads per job).

import sys

from snakemake.utils import min_version

from knowsubnet.core import config as params_config
from knowsubnet.core.errors import InputError

min_version("9.15")


configfile: "params.yaml"


# One param from the command line: `--config train__steps=10 'run__targets=[IsA]'` (Snakemake's CLI
# refuses dots in keys; values are YAML). A bad key or value is one line naming it and what is
# allowed, not snakemake.utils.validate's schema dump.
try:
    params_config.check_snakemake_config(config, workflow.config_settings.config_args,
                                         workflow.overwrite_configfiles, "config/params.schema.yaml")
except InputError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


# `snakemake --report report.html` after a run: the workflow, run times, and the report's files
report: "workflow/report/workflow.rst"


# Downloads run where snakemake runs (on a cluster: the login node, which has network); the tiny
# model's training there takes a minute on one CPU.
localrules: all, fetch_data, prepare_model


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/discovery.smk"
include: "workflow/rules/downstream.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/sweep.smk"


rule all:
    default_target: True
    input:
        expand("data/processed/splits/{target}/summary.json", target=TARGETS),
        "results/report.md",
        expand("results/masks/{model}/{target}/seed{seed}/mask.safetensors", model=MODELS, target=TARGETS, seed=SEEDS),
        expand("results/eval/{model}/{target}/seed{seed}/metrics.json", model=MODELS, target=TARGETS, seed=SEEDS),
        csqa_results(),
        export_results(),


# A path on the command line that names an undefined target or model: one line listing the defined
# ones (workflow/rules/common.smk), not a MissingRuleException.
check_requested_paths(sys.argv[1:])
