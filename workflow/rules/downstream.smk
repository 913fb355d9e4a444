# Downstream: CommonsenseQA finetuning of the original / remaining / random-removed models, for the
# CSQA-linked targets of the run (selector `csqa:`), one results file per finetuning mode.
# Device from params csqa.device (auto: CUDA when present); a GPU stage on a cluster, like discover_mask.

# DVC cannot filter run.targets: the generator writes this stage's matrix out (workflow/dvc_yaml.py).
DVC_MATRIX["finetune_csqa"] = {"target": CSQA_TARGETS, "seed": "${csqa.mask_seeds}", "mode": "${csqa.modes}"}


rule finetune_csqa:
    input:
        model="results/models/{model}/config.json",
        mask="results/masks/{model}/{target}/seed{seed}/mask.safetensors",
        triplets="data/processed/triplets.parquet",
        splits=lambda w: split_files(w.target),
        verbalized="results/verbalized/{model}/{target}.parquet",
        manifest="data/raw/manifest.json",
    output:
        "results/csqa/{model}/{target}/seed{seed}/{mode}.json",
    wildcard_constraints:
        mode="head|lora|full",
    params:
        **stage_sections("finetune_csqa"),
    threads: 1
    resources:
        gpu=1,  # a GPU stage: on a cluster it asks for one GPU (workflow/profiles/slurm*)
    benchmark:
        "results/benchmarks/finetune_csqa/{model}/{target}/seed{seed}/{mode}.tsv"
    log:
        "logs/finetune_csqa/{model}/{target}/seed{seed}/{mode}.log",
    conda:
        "../envs/knowsubnet.yaml"
    shell:
        "knowsubnet finetune_csqa --params {PARAMS} --model {wildcards.model} "
        "--target {wildcards.target} --seed {wildcards.seed} --mode {wildcards.mode} "
        "--model-dir results/models/{wildcards.model} --mask {input.mask} --triplets {input.triplets} "
        "--splits data/processed/splits/{wildcards.target} --verbalized {input.verbalized} --csqa-dir data/raw/commonsenseqa "
        "--out {output} 2> {log}"
