# Evaluation: ablation metrics per mask, seed combinations, and the report.


rule evaluate_ablation:
    input:
        model="results/models/{model}/config.json",
        verbalized="results/verbalized/{model}/{target}.parquet",
        splits=lambda w: split_files(w.target),
        controllm="results/controllm/{model}/test.safetensors",
        mask="results/masks/{model}/{target}/seed{seed}/mask.safetensors",
    output:
        metrics="results/eval/{model}/{target}/seed{seed}/metrics.json",
        headline=metrics_file("results/eval/{model}/{target}/seed{seed}/headline.json"),
        facts="results/eval/{model}/{target}/seed{seed}/facts.parquet",
    params:
        **stage_sections("evaluate_ablation"),  # report.bars: the headline's verdict
    threads: 1
    resources:
        gpu=1,  # a GPU stage: on a cluster it asks for one GPU (workflow/profiles/slurm*)
    log:
        "logs/evaluate_ablation/{model}/{target}/seed{seed}.log",
    conda:
        "../envs/knowsubnet.yaml"
    shell:
        "knowsubnet evaluate_ablation --params {PARAMS} --model {wildcards.model} "
        "--target {wildcards.target} --seed {wildcards.seed} --model-dir results/models/{wildcards.model} "
        "--verbalized {input.verbalized} --splits data/processed/splits/{wildcards.target} "
        "--controllm results/controllm/{wildcards.model} --mask {input.mask} --out {output.metrics} "
        "--headline {output.headline} --facts {output.facts} 2> {log}"


rule evaluate_robustness:
    """Removed, or only hidden? Held-out facts and wordings, in context, readouts, quantization, relearning, specificity."""
    input:
        **robustness_inputs("results/masks/{model}/{target}/seed{seed}/mask.safetensors"),
    output:
        result="results/robustness/{model}/{target}/seed{seed}/robustness.json",
        sentences="results/robustness/{model}/{target}/seed{seed}/sentences.parquet",
        headline=metrics_file("results/robustness/{model}/{target}/seed{seed}/headline.json"),
    params:
        **stage_sections("evaluate_robustness"),
        out_dir=lambda w, output: str(Path(output.result).parent),
    threads: 1
    resources:
        gpu=1,  # a GPU stage: on a cluster it asks for one GPU (workflow/profiles/slurm*)
    benchmark:
        "results/benchmarks/evaluate_robustness/{model}/{target}/seed{seed}.tsv"
    log:
        "logs/evaluate_robustness/{model}/{target}/seed{seed}.log",
    conda:
        "../envs/knowsubnet.yaml"
    shell:
        "knowsubnet evaluate_robustness --params {PARAMS} --model {wildcards.model} "
        "--target {wildcards.target} --seed {wildcards.seed} --model-dir results/models/{wildcards.model} "
        "--mask {input.mask} --triplets {input.triplets} --splits-root data/processed/splits "
        "--verbalized-root results/verbalized/{wildcards.model} --controllm results/controllm/{wildcards.model} "
        "--out-dir {params.out_dir} 2> {log}"


rule combine_seeds:
    """A target's seed masks combined (union, intersection, majority) and evaluated like one mask."""
    input:
        masks=lambda w: expand("results/masks/{{model}}/{{target}}/seed{seed}/mask.safetensors", seed=SEEDS),
        model="results/models/{model}/config.json",
        verbalized="results/verbalized/{model}/{target}.parquet",
        splits=lambda w: split_files(w.target),
        controllm="results/controllm/{model}/test.safetensors",
    output:
        masks=expand("results/combined/{{model}}/{{target}}/{how}.safetensors", how=COMBINATIONS),
        metrics=expand("results/eval/{{model}}/{{target}}/combined/{how}.json", how=COMBINATIONS),
    params:
        **stage_sections("combine_seeds"),
    threads: 1
    resources:
        gpu=1,  # a GPU stage: on a cluster it asks for one GPU (workflow/profiles/slurm*)
    benchmark:
        "results/benchmarks/combine_seeds/{model}/{target}.tsv"
    log:
        "logs/combine_seeds/{model}/{target}.log",
    conda:
        "../envs/knowsubnet.yaml"
    shell:
        "knowsubnet combine_seeds --params {PARAMS} --model {wildcards.model} "
        "--target {wildcards.target} --masks {input.masks} --model-dir results/models/{wildcards.model} "
        "--verbalized {input.verbalized} --splits data/processed/splits/{wildcards.target} "
        "--controllm results/controllm/{wildcards.model} --out-masks results/combined/{wildcards.model}/{wildcards.target} "
        "--out-eval results/eval/{wildcards.model}/{wildcards.target}/combined 2> {log}"


rule report:
    """Tables (CSV, Markdown), figures (PNG) and results/report.md over every model x target x seed."""
    input:
        metrics=expand("results/eval/{model}/{target}/seed{seed}/metrics.json", model=MODELS, target=TARGETS, seed=SEEDS),
        combined=expand("results/eval/{model}/{target}/combined/{how}.json", model=MODELS, target=TARGETS,
                        how=COMBINATIONS) if len(SEEDS) > 1 else [],
        masks=expand("results/masks/{model}/{target}/seed{seed}/mask.safetensors", model=MODELS, target=TARGETS, seed=SEEDS),
        logs=expand("results/masks/{model}/{target}/seed{seed}/train_log.csv", model=MODELS, target=TARGETS, seed=SEEDS),
        metas=expand("results/masks/{model}/{target}/seed{seed}/meta.json", model=MODELS, target=TARGETS, seed=SEEDS),
        models=expand("results/models/{model}/config.json", model=MODELS),  # read for the attention geometry
        csqa=csqa_results(),
        robustness=expand("results/robustness/{model}/{target}/seed{seed}/robustness.json", model=MODELS,
                          target=TARGETS, seed=SEEDS),
        baselines=baseline_results("meta.json"),
        baseline_metrics=baseline_results("eval/metrics.json"),
        baseline_robustness=baseline_results("robustness/robustness.json"),
    output:
        # report.md links into tables/ and figures/; both are whole directories, so a re-run leaves no
        # stale file behind, and `snakemake --report` shows what they hold
        report("results/report.md", caption="../report/report_md.rst", category="1. Report"),
        report(directory("results/tables"), patterns=["{name}.csv"], caption="../report/tables.rst",
               category="3. Tables"),
        report(directory("results/figures"), patterns=["{name}.png"], caption="../report/figures.rst",
               category="2. Figures"),
    params:
        **stage_sections("report"),
    log:
        "logs/report.log",
    conda:
        "../envs/knowsubnet.yaml"
    shell:
        "knowsubnet report --params {PARAMS} --metrics {input.metrics} {input.combined} "
        "--masks {input.masks} --logs {input.logs} --metas {input.metas} --csqa {input.csqa} --robustness {input.robustness} "
        "--baselines {input.baselines} --baseline-metrics {input.baseline_metrics} "
        "--baseline-robustness {input.baseline_robustness} --out-dir results "
        "--models-root results/models 2> {log}"


# `dvc plots show` (workflow/dvc_yaml.py writes these into dvc.yaml's top-level `plots:`): the report's
# figures, each run's validation curves (every train.select.every steps) and the trade-off of every
# validated checkpoint, target removal against control damage.
_TRAIN_LOGS = expand("results/masks/{model}/{target}/seed{seed}/train_log.csv", model=MODELS, target=TARGETS,
                     seed=SEEDS)
DVC_PLOTS += [
    "results/figures",
    {"validation_targetkg_ppl": {"x": "step", "y": {log: "val_targetkg_ppl" for log in _TRAIN_LOGS},
                                 "title": "TargetKG validation PPL of the deterministic mask"}},
    {"validation_controlkg_ppl": {"x": "step", "y": {log: "val_controlkg_ppl" for log in _TRAIN_LOGS},
                                  "title": "ControlKG validation PPL of the deterministic mask"}},
    {"tradeoff": {"template": "scatter", "x": {"results/tables/tradeoff.csv": "controlkg_x_removed"},
                  "y": {"results/tables/tradeoff.csv": "targetkg_x_removed"},
                  "title": "Trade-off: TargetKG PPL x (removal) against ControlKG PPL x (damage)"}},
]
