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
        mask=section("mask"),
        train=section("train"),
        known=section("known"),
        scored=section("verbalize", "scored_positions"),
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
        "python workflow/scripts/discover_mask.py --params {PARAMS} --model {wildcards.model} "
        "--target {wildcards.target} --seed {wildcards.seed} --model-dir results/models/{wildcards.model} "
        "--verbalized {input.verbalized} --splits data/processed/splits/{wildcards.target} "
        "--controllm results/controllm/{wildcards.model} --out-dir {params.out_dir} 2> {log}"


rule export_remaining:
    """On demand: the model with the subnetwork removed, as a standard Hugging Face directory."""
    input:
        model="results/models/{model}/config.json",
        mask="results/masks/{model}/{target}/seed{seed}/mask.safetensors",
    output:
        directory("results/remaining/{model}/{target}/seed{seed}"),
    log:
        "logs/export_remaining/{model}/{target}/seed{seed}.log",
    conda:
        "../envs/knowsubnet.yaml"
    shell:
        "python workflow/scripts/export_remaining.py --model-dir results/models/{wildcards.model} "
        "--mask {input.mask} --out {output} 2> {log}"
