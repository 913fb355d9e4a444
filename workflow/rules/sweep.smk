# The search on validation (params `sweep`; docs/SEARCH.md): every sweep point, per run model x target x
# seed, runs the existing stages (`knowsubnet discover_mask` or `remove_baseline`, then `evaluate_ablation`)
# with its params overlay merged after the run's params (`--params PARAMS results/sweep/points/<point>.yaml`),
# into results/sweep/{model}/{target}/{point}/seed{seed}/; sweep_select then keeps one point per method on
# validation (results/sweep/selection.{csv,md}, frontier.png). Not in the default target: `snakemake sweep`.
# One rule per method (a baseline's --method is fixed per rule, so DVC needs no per-point lookup); each
# rule's {point} takes only its method's points. The run's own mask is the point `preset` of every sweep.
# Local rules, without `resources: gpu=1`: the sweep is sized for the cores of the machine Snakemake runs on
# (docs/SEARCH.md). The SLURM profiles (workflow/profiles/) do not size these rules yet; until they do (a GPU
# partition, mem_mb and runtime per rule, as discover_mask's), a cluster runs the sweep where Snakemake runs.
# The per-baseline rules (one per registered method) say `localrule: True` themselves.
localrules: sweep_point, sweep_mask, sweep_evaluate_mask, sweep_evaluate_baseline, sweep_select, sweep, \
    sweep_val_wordings_preset, sweep_val_wordings_mask, sweep_val_wordings_baseline, \
    sweep_robustness_mask, sweep_robustness_baseline, sweep_goals, sweep_robustness

SWEEP_DIR = "results/sweep/{model}/{target}/{point}/seed{seed}"


rule sweep_point:
    """A sweep point's params overlay as a file (checked: merged over the params, it validates)."""
    output:
        "results/sweep/points/{point}.yaml",
    wildcard_constraints:
        point=sweep_point_regex(sweep_points()),
    params:
        **stage_sections("sweep_point"),
    log:
        "logs/sweep_point/{point}.log",
    conda:
        "../envs/knowsubnet.yaml"
    shell:
        "knowsubnet sweep_point --params {PARAMS} --point {wildcards.point} --out {output} 2> {log}"


rule sweep_mask:
    """discover_mask with the point's overlay."""
    input:
        point="results/sweep/points/{point}.yaml",
        model="results/models/{model}/config.json",
        verbalized="results/verbalized/{model}/{target}.parquet",
        splits=lambda w: split_files(w.target),
        controllm="results/controllm/{model}/train.safetensors",
        controllm_val="results/controllm/{model}/val.safetensors",
    output:
        mask=f"{SWEEP_DIR}/mask.safetensors",
        meta=f"{SWEEP_DIR}/meta.json",
        log_csv=f"{SWEEP_DIR}/train_log.csv",
        metrics=f"{SWEEP_DIR}/metrics.json",
    wildcard_constraints:
        point=sweep_point_regex(sweep_points("mask")),
    params:
        **stage_sections("discover_mask"),
        out_dir=lambda w, output: str(Path(output.mask).parent),
    threads: 1
    benchmark:
        "results/benchmarks/sweep_mask/{model}/{target}/{point}/seed{seed}.tsv"
    log:
        "logs/sweep_mask/{model}/{target}/{point}/seed{seed}.log",
    conda:
        "../envs/knowsubnet.yaml"
    shell:
        "knowsubnet discover_mask --params {PARAMS} {input.point} --model {wildcards.model} "
        "--target {wildcards.target} --seed {wildcards.seed} --model-dir results/models/{wildcards.model} "
        "--verbalized {input.verbalized} --splits data/processed/splits/{wildcards.target} "
        "--controllm results/controllm/{wildcards.model} --out-dir {params.out_dir} --no-progress 2> {log}"


for _method in removal_methods.baselines():

    rule:
        """remove_baseline (one method) with the point's overlay; the methods sized by the mask take the
        run's own mask (results/masks) as their size."""
        name:
            f"sweep_{_method}"
        localrule: True
        input:
            point="results/sweep/points/{point}.yaml",
            model="results/models/{model}/config.json",
            verbalized="results/verbalized/{model}/{target}.parquet",
            splits=lambda w: split_files(w.target),
            controllm="results/controllm/{model}/train.safetensors",
            controllm_val="results/controllm/{model}/val.safetensors",
            mask=(["results/masks/{model}/{target}/seed{seed}/mask.safetensors"] if _method in SIZED_BY_MASK else []),
        output:
            removal=f"{SWEEP_DIR}/removal.safetensors",
            meta=f"{SWEEP_DIR}/meta.json",
        wildcard_constraints:
            point=sweep_point_regex(sweep_points(_method)),
        params:
            # the method as a param, not as {_method} in the command: Snakemake evaluates a shell command's
            # f-string again when the job runs, after the loop has moved on
            method_name=_method,
            **stage_sections("remove_baseline", baseline=_method),
            mask_arg=((lambda w: f"--mask results/masks/{w.model}/{w.target}/seed{w.seed}/mask.safetensors")
                      if _method in SIZED_BY_MASK else ""),
            out_dir=lambda w, output: str(Path(output.meta).parent),
        threads: 1
        benchmark:
            f"results/benchmarks/sweep_{_method}/{{model}}/{{target}}/{{point}}/seed{{seed}}.tsv"
        log:
            f"logs/sweep_{_method}/{{model}}/{{target}}/{{point}}/seed{{seed}}.log",
        conda:
            "../envs/knowsubnet.yaml"
        shell:
            "knowsubnet remove_baseline --params {PARAMS} {input.point} --method {params.method_name} "
            "--model {wildcards.model} --target {wildcards.target} --seed {wildcards.seed} "
            "--model-dir results/models/{wildcards.model} --verbalized {input.verbalized} "
            "--splits data/processed/splits/{wildcards.target} --controllm results/controllm/{wildcards.model} "
            "{params.mask_arg} --out-dir {params.out_dir} --no-progress 2> {log}"


for _kind, _removal in (("mask", "mask.safetensors"), ("baseline", "removal.safetensors")):

    rule:
        """evaluate_ablation on the point's removal, with its overlay (test splits; sweep_select reads only
        the kept points' headlines)."""
        name:
            f"sweep_evaluate_{_kind}"
        input:
            point="results/sweep/points/{point}.yaml",
            model="results/models/{model}/config.json",
            verbalized="results/verbalized/{model}/{target}.parquet",
            splits=lambda w: split_files(w.target),
            controllm="results/controllm/{model}/test.safetensors",
            mask=f"{SWEEP_DIR}/{_removal}",
        output:
            metrics=f"{SWEEP_DIR}/eval/metrics.json",
            headline=f"{SWEEP_DIR}/eval/headline.json",
            facts=f"{SWEEP_DIR}/eval/facts.parquet",
        wildcard_constraints:
            point=sweep_point_regex(sweep_points("mask") if _kind == "mask"
                                    else [p for m in removal_methods.baselines() for p in sweep_points(m)]),
        params:
            **stage_sections("evaluate_ablation"),
        threads: 1
        log:
            f"logs/sweep_evaluate_{_kind}/{{model}}/{{target}}/{{point}}/seed{{seed}}.log",
        conda:
            "../envs/knowsubnet.yaml"
        shell:
            "knowsubnet evaluate_ablation --params {PARAMS} {input.point} --model {wildcards.model} "
            "--target {wildcards.target} --seed {wildcards.seed} --model-dir results/models/{wildcards.model} "
            "--verbalized {input.verbalized} --splits data/processed/splits/{wildcards.target} "
            "--controllm results/controllm/{wildcards.model} --mask {input.mask} --out {output.metrics} "
            "--headline {output.headline} --facts {output.facts} 2> {log}"


# -- the validation-wording check of every point (the preset's beside its evaluation), for the choice --

for _kind, _removal, _out in (
    ("preset", "results/masks/{model}/{target}/seed{seed}/mask.safetensors",
     "results/eval/{model}/{target}/seed{seed}/val_wordings.json"),
    ("mask", f"{SWEEP_DIR}/mask.safetensors", f"{SWEEP_DIR}/eval/val_wordings.json"),
    ("baseline", f"{SWEEP_DIR}/removal.safetensors", f"{SWEEP_DIR}/eval/val_wordings.json"),
):

    rule:
        """evaluate_val_wordings on the removal: validation facts in the validation wordings (with the
        point's overlay; the preset with the run's params)."""
        name:
            f"sweep_val_wordings_{_kind}"
        input:
            point=[] if _kind == "preset" else ["results/sweep/points/{point}.yaml"],
            model="results/models/{model}/config.json",
            verbalized="results/verbalized/{model}/{target}.parquet",
            splits=lambda w: split_files(w.target),
            controllm_val="results/controllm/{model}/val.safetensors",
            mask=_removal,
        output:
            _out,
        wildcard_constraints:
            point=sweep_point_regex(sweep_points("mask") if _kind == "mask"
                                    else [p for m in removal_methods.baselines() for p in sweep_points(m)]),
        params:
            **stage_sections("evaluate_val_wordings"),
        threads: 1
        log:
            f"logs/sweep_val_wordings_{_kind}/" + ("{model}/{target}/seed{seed}.log" if _kind == "preset"
                                                   else "{model}/{target}/{point}/seed{seed}.log"),
        conda:
            "../envs/knowsubnet.yaml"
        shell:
            "knowsubnet evaluate_val_wordings --params {PARAMS} {input.point} "
            "--model-dir results/models/{wildcards.model} --mask {input.mask} "
            "--splits data/processed/splits/{wildcards.target} --verbalized {input.verbalized} "
            "--controllm-val {input.controllm_val} --out {output} 2> {log}"


# sweep_select's five parallel lists, one entry per point (sweep_runs), in the order of its --names
SWEEP_NAMES, SWEEP_METAS, SWEEP_HEADLINES, SWEEP_FACTS, SWEEP_WORDINGS = (
    list(column) for column in zip(*sweep_runs())
)


rule sweep_select:
    """The search's table: every point's validation numbers and cost, one point kept per method x model x
    target x seed on validation, the kept points' test numbers (knowsubnet.report.sweep), and the kept
    points pooled over seeds with intervals (comparison.md, knowsubnet.report.seed_comparison)."""
    input:
        metas=SWEEP_METAS,
        headlines=SWEEP_HEADLINES,
        facts=SWEEP_FACTS,
        wordings=SWEEP_WORDINGS,
    output:
        csv="results/sweep/selection.csv",
        md="results/sweep/selection.md",
        figure="results/sweep/frontier.png",
        comparison_csv="results/sweep/comparison.csv",
        comparison_md="results/sweep/comparison.md",
        comparison_figure="results/sweep/comparison.png",
    params:
        **stage_sections("sweep_select"),
        names=" ".join(SWEEP_NAMES),
    log:
        "logs/sweep_select.log",
    conda:
        "../envs/knowsubnet.yaml"
    shell:
        "knowsubnet sweep_select --params {PARAMS} --names {params.names} --metas {input.metas} "
        "--headlines {input.headlines} --facts {input.facts} --wordings {input.wordings} --out-dir results/sweep "
        "2> {log}"


rule sweep:
    """`snakemake --cores 2 sweep`: every sweep point and the table."""
    input:
        "results/sweep/selection.md",


# -- the robustness stage for the points of params sweep.robustness (after the choice), and the goal table --

for _kind, _removal in (("mask", "mask.safetensors"), ("baseline", "removal.safetensors")):

    rule:
        """evaluate_robustness on the point's removal, with its overlay (its trained wordings among them)."""
        name:
            f"sweep_robustness_{_kind}"
        input:
            point="results/sweep/points/{point}.yaml",
            **robustness_inputs(f"{SWEEP_DIR}/{_removal}"),
        output:
            result=f"{SWEEP_DIR}/robustness/robustness.json",
            sentences=f"{SWEEP_DIR}/robustness/sentences.parquet",
            headline=f"{SWEEP_DIR}/robustness/headline.json",
        wildcard_constraints:
            point=sweep_point_regex(sweep_robustness_points(_kind)),
        params:
            **stage_sections("evaluate_robustness"),
            out_dir=lambda w, output: str(Path(output.result).parent),
        threads: 1
        benchmark:
            f"results/benchmarks/sweep_robustness_{_kind}/{{model}}/{{target}}/{{point}}/seed{{seed}}.tsv"
        log:
            f"logs/sweep_robustness_{_kind}/{{model}}/{{target}}/{{point}}/seed{{seed}}.log",
        conda:
            "../envs/knowsubnet.yaml"
        shell:
            "knowsubnet evaluate_robustness --params {PARAMS} {input.point} --model {wildcards.model} "
            "--target {wildcards.target} --seed {wildcards.seed} --model-dir results/models/{wildcards.model} "
            "--mask {input.mask} --triplets {input.triplets} --splits-root data/processed/splits "
            "--verbalized-root results/verbalized/{wildcards.model} --controllm results/controllm/{wildcards.model} "
            "--out-dir {params.out_dir} 2> {log}"


rule sweep_goals:
    """The goal table: every robustness point's numbers beside the goal (knowsubnet.report.goals)."""
    input:
        results=[result for _, result in sweep_robustness_runs()],
    output:
        csv="results/sweep/goals.csv",
        md="results/sweep/goals.md",
    params:
        **stage_sections("sweep_goals"),
        names=" ".join(name for name, _ in sweep_robustness_runs()),
    log:
        "logs/sweep_goals.log",
    conda:
        "../envs/knowsubnet.yaml"
    shell:
        "knowsubnet sweep_goals --params {PARAMS} --names {params.names} --results {input.results} "
        "--out-dir results/sweep 2> {log}"


rule sweep_robustness:
    """`snakemake --cores 2 sweep_robustness`: the points of sweep.robustness through robustness, and the goal table."""
    input:
        "results/sweep/goals.md",


# dvc.yaml (only when the params define points): the same stages, `dvc repro sweep_select`
if SWEEP_POINTS:
    DVC_MATRIX["sweep_point"] = {"point": sweep_points()}
    DVC_MATRIX["sweep_evaluate_mask"] = {"point": sweep_points("mask")}
    DVC_MATRIX["sweep_evaluate_baseline"] = {"point": [p for m in removal_methods.baselines() for p in sweep_points(m)]}
    for _method in SWEEP_METHODS:
        DVC_MATRIX[f"sweep_{_method}"] = {"point": sweep_points(_method)}
    DVC_STAGES += [f"sweep_{m}" for m in SWEEP_METHODS if sweep_points(m)]
    DVC_STAGES += ["sweep_point", "sweep_select"]
    DVC_MATRIX["sweep_val_wordings_mask"] = DVC_MATRIX["sweep_evaluate_mask"]
    DVC_MATRIX["sweep_val_wordings_baseline"] = DVC_MATRIX["sweep_evaluate_baseline"]
    DVC_STAGES += [f"sweep_{stage}_{k}" for stage in ("evaluate", "val_wordings") for k in ("mask", "baseline")
                   if (sweep_points("mask") if k == "mask" else len(sweep_points()) > len(sweep_points("mask")))]
    DVC_STAGES.append("sweep_val_wordings_preset")
if sweep_robustness_points():
    for _kind in ("mask", "baseline"):
        if sweep_robustness_points(_kind):
            DVC_MATRIX[f"sweep_robustness_{_kind}"] = {"point": sweep_robustness_points(_kind)}
            DVC_STAGES.append(f"sweep_robustness_{_kind}")
    DVC_STAGES.append("sweep_goals")
