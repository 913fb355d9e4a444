# Mask discovery: one mask per model x target x seed. A GPU stage on a cluster (see the slurm profile).


rule discover_mask:
    input:
        model="results/models/{model}/config.json",
        verbalized="results/verbalized/{model}/{target}.parquet",
        splits=lambda w: split_files(w.target),
        controllm="results/controllm/{model}/train.safetensors",
        controllm_val="results/controllm/{model}/val.safetensors",
    output:
        mask="results/masks/{model}/{target}/seed{seed}/mask.safetensors",
        meta="results/masks/{model}/{target}/seed{seed}/meta.json",
        log_csv=plots_file("results/masks/{model}/{target}/seed{seed}/train_log.csv", x="step", y="loss"),
        metrics=metrics_file("results/masks/{model}/{target}/seed{seed}/metrics.json"),
    params:
        **stage_sections("discover_mask"),
        out_dir=lambda w, output: str(Path(output.mask).parent),
    threads: 1
    resources:
        gpu=1,  # a GPU stage: on a cluster it asks for one GPU (workflow/profiles/slurm*)
    benchmark:
        "results/benchmarks/discover_mask/{model}/{target}/seed{seed}.tsv"
    log:
        "logs/discover_mask/{model}/{target}/seed{seed}.log",
    conda:
        "../envs/knowsubnet.yaml"
    shell:
        "knowsubnet discover_mask --params {PARAMS} --model {wildcards.model} "
        "--target {wildcards.target} --seed {wildcards.seed} --model-dir results/models/{wildcards.model} "
        "--verbalized {input.verbalized} --splits data/processed/splits/{wildcards.target} "
        "--controllm results/controllm/{wildcards.model} --out-dir {params.out_dir} 2> {log}"


rule export_remaining:
    """The model with the subnetwork removed (params export.keep: subnetwork keeps only it) as a
    Hugging Face folder with a model card (README.md). On demand (`snakemake results/remaining/...`),
    and for the seeds of export.seeds in the default target."""
    input:
        model="results/models/{model}/config.json",
        mask="results/masks/{model}/{target}/seed{seed}/mask.safetensors",
        # the card's numbers: the evaluation headline (with its verdict) and the robustness headline
        headline="results/eval/{model}/{target}/seed{seed}/headline.json",
        robustness="results/robustness/{model}/{target}/seed{seed}/headline.json",
    output:
        directory("results/remaining/{model}/{target}/seed{seed}"),
    params:
        # export.keep; the card shows the target's selector, where its facts come from, the verdict's bars
        **stage_sections("export_remaining"),
    log:
        "logs/export_remaining/{model}/{target}/seed{seed}.log",
    conda:
        "../envs/knowsubnet.yaml"
    shell:
        "knowsubnet export_remaining --params {PARAMS} --model-dir results/models/{wildcards.model} "
        "--mask {input.mask} --headline {input.headline} --robustness {input.robustness} --out {output} 2> {log}"


# dvc.yaml: a stage per run model x target x seed of export.seeds, written even while that list is
# empty (DVC then makes no stage; `dvc repro` exports once export.seeds names a seed)
DVC_MATRIX["export_remaining"] = {"seed": "${export.seeds}"}
DVC_STAGES.append("export_remaining")
