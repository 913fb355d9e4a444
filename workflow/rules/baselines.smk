# Baselines: other ways of removing the same knowledge (run.baselines; docs/BASELINES.md), one removal
# per model x target x method x seed, evaluated exactly as the learned mask is (the same stages).
# Each job's params are its own method's section: editing one method re-runs only its stages.
# Two recipes: the methods sized by the seed's learned mask read it; the finetuning ones do not.

# DVC cannot filter run.baselines: the generator writes these stages' method lists out (workflow/dvc_yaml.py).
DVC_MATRIX["prune_baseline"] = {"baseline": [b for b in BASELINES if b in SIZED_BY_MASK]}
DVC_MATRIX["unlearn_baseline"] = {"baseline": [b for b in BASELINES if b in UNLEARNING]}


rule prune_baseline:
    """Remove as many weights per matrix as the learned mask: magnitude-matched random, attribution, neurons."""
    input:
        model="results/models/{model}/config.json",
        verbalized="results/verbalized/{model}/{target}.parquet",
        splits=lambda w: split_files(w.target),
        controllm="results/controllm/{model}/train.safetensors",
        controllm_val="results/controllm/{model}/val.safetensors",
        mask="results/masks/{model}/{target}/seed{seed}/mask.safetensors",
    output:
        removal="results/baselines/{model}/{target}/{baseline}/seed{seed}/removal.safetensors",
        meta="results/baselines/{model}/{target}/{baseline}/seed{seed}/meta.json",
    wildcard_constraints:
        baseline="|".join(SIZED_BY_MASK),
    params:
        **stage_sections("remove_baseline"),
        mask_arg=lambda w, input: f"--mask {input.mask}",
        out_dir=lambda w, output: str(Path(output.meta).parent),
    threads: 1
    resources:
        gpu=1,  # a GPU stage: on a cluster it asks for one GPU (workflow/profiles/slurm*)
    benchmark:
        "results/benchmarks/prune_baseline/{model}/{target}/{baseline}/seed{seed}.tsv"
    log:
        "logs/prune_baseline/{model}/{target}/{baseline}/seed{seed}.log",
    conda:
        "../envs/knowsubnet.yaml"
    shell:
        "knowsubnet remove_baseline --params {PARAMS} --method {wildcards.baseline} "
        "--model {wildcards.model} --target {wildcards.target} --seed {wildcards.seed} "
        "--model-dir results/models/{wildcards.model} --verbalized {input.verbalized} "
        "--splits data/processed/splits/{wildcards.target} --controllm results/controllm/{wildcards.model} "
        "{params.mask_arg} --out-dir {params.out_dir} --no-progress 2> {log}"


# Finetune the masked layers' weights to forget the target: GradDiff, NPO, RMU (resumes after a kill).
use rule prune_baseline as unlearn_baseline with:
    input:
        model="results/models/{model}/config.json",
        verbalized="results/verbalized/{model}/{target}.parquet",
        splits=lambda w: split_files(w.target),
        controllm="results/controllm/{model}/train.safetensors",
        controllm_val="results/controllm/{model}/val.safetensors",
    wildcard_constraints:
        baseline="|".join(UNLEARNING),
    params:
        **stage_sections("remove_baseline"),
        mask_arg="",
        out_dir=lambda w, output: str(Path(output.meta).parent),
    benchmark:
        "results/benchmarks/unlearn_baseline/{model}/{target}/{baseline}/seed{seed}.tsv"
    log:
        "logs/unlearn_baseline/{model}/{target}/{baseline}/seed{seed}.log",


use rule evaluate_ablation as evaluate_baseline with:
    input:
        model="results/models/{model}/config.json",
        verbalized="results/verbalized/{model}/{target}.parquet",
        splits=lambda w: split_files(w.target),
        controllm="results/controllm/{model}/test.safetensors",
        mask="results/baselines/{model}/{target}/{baseline}/seed{seed}/removal.safetensors",
    output:
        metrics="results/baselines/{model}/{target}/{baseline}/seed{seed}/eval/metrics.json",
        headline=metrics_file("results/baselines/{model}/{target}/{baseline}/seed{seed}/eval/headline.json"),
        facts="results/baselines/{model}/{target}/{baseline}/seed{seed}/eval/facts.parquet",
    benchmark:
        "results/benchmarks/evaluate_baseline/{model}/{target}/{baseline}/seed{seed}.tsv"
    log:
        "logs/evaluate_baseline/{model}/{target}/{baseline}/seed{seed}.log",


use rule evaluate_robustness as baseline_robustness with:
    input:
        **robustness_inputs("results/baselines/{model}/{target}/{baseline}/seed{seed}/removal.safetensors"),
    output:
        result="results/baselines/{model}/{target}/{baseline}/seed{seed}/robustness/robustness.json",
        sentences="results/baselines/{model}/{target}/{baseline}/seed{seed}/robustness/sentences.parquet",
        headline=metrics_file("results/baselines/{model}/{target}/{baseline}/seed{seed}/robustness/headline.json"),
    benchmark:
        "results/benchmarks/baseline_robustness/{model}/{target}/{baseline}/seed{seed}.tsv"
    log:
        "logs/baseline_robustness/{model}/{target}/{baseline}/seed{seed}.log",
