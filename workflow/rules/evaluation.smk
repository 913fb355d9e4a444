# Evaluation: ablation metrics per mask, seed combinations, and the report.


rule evaluate_ablation:
    input:
        model="results/models/{model}/config.json",
        verbalized="results/verbalized/{model}/{target}.parquet",
        splits=lambda w: split_files(w.target),
        controllm="results/controllm/{model}/test.safetensors",
        mask="results/masks/{model}/{target}/seed{seed}/mask.safetensors",
    output:
        "results/eval/{model}/{target}/seed{seed}/metrics.json",
    params:
        eval=section("eval"),
        mask=section("mask"),
    threads: 2
    log:
        "logs/evaluate_ablation/{model}/{target}/seed{seed}.log",
    shell:
        "{PY} workflow/scripts/evaluate_ablation.py --params {PARAMS} --model {wildcards.model} "
        "--target {wildcards.target} --seed {wildcards.seed} --model-dir results/models/{wildcards.model} "
        "--verbalized {input.verbalized} --splits data/processed/splits/{wildcards.target} "
        "--controllm results/controllm/{wildcards.model} --mask {input.mask} --out {output} 2> {log}"
