# Models: prepare each model as a local HF directory, verbalise facts with its best templates,
# and cut WikiText-2 into its ControlLM blocks.


rule prepare_model:
    input:
        unpack(model_inputs),
    output:
        config=whole_dir("results/models/{model}/config.json", "results/models/{model}"),
        provenance="results/models/{model}/provenance.json",
    params:
        **stage_sections("prepare_model", omit=["run.targets"]),
        # only the tiny model reads run.targets (it trains on their facts): a pretrained one is not re-made
        run_targets=lambda w: section("run", "targets") if is_tiny(w.model) else "",
        facts_arg=lambda w, input: f"--splits-dir data/processed/splits --text {input.text}" if "splits" in input.keys() else "",
    threads: 1
    benchmark:
        "results/benchmarks/prepare_model/{model}.tsv"
    log:
        "logs/prepare_model/{model}.log",
    conda:
        "../envs/knowsubnet.yaml"
    shell:
        "knowsubnet prepare_model --params {PARAMS} --model {wildcards.model} "
        "--out results/models/{wildcards.model} {params.facts_arg} 2> {log}"


rule verbalize:
    input:
        model="results/models/{model}/config.json",
        splits=lambda w: split_files(w.target),
    output:
        "results/verbalized/{model}/{target}.parquet",
    params:
        **stage_sections("verbalize"),
    threads: 1
    resources:
        gpu=1,  # a GPU stage: on a cluster it asks for one GPU (workflow/profiles/slurm*)
    benchmark:
        "results/benchmarks/verbalize/{model}/{target}.tsv"
    log:
        "logs/verbalize/{model}/{target}.log",
    conda:
        "../envs/knowsubnet.yaml"
    shell:
        "knowsubnet verbalize --params {PARAMS} --model-dir results/models/{wildcards.model} "
        "--splits data/processed/splits/{wildcards.target} --out {output} 2> {log}"


rule tokenize_controllm:
    input:
        model="results/models/{model}/config.json",
        # controllm.train_text: WikiText-2 valid (default; the mirror has no train) or train (the paper)
        train=f"data/raw/wikitext-2-raw/wiki.{config['controllm']['train_text']}.raw",
        test="data/raw/wikitext-2-raw/wiki.test.raw",
    output:
        train="results/controllm/{model}/train.safetensors",
        val="results/controllm/{model}/val.safetensors",
        test="results/controllm/{model}/test.safetensors",
    params:
        **stage_sections("tokenize_controllm"),
    benchmark:
        "results/benchmarks/tokenize_controllm/{model}.tsv"
    log:
        "logs/tokenize_controllm/{model}.log",
    conda:
        "../envs/knowsubnet.yaml"
    shell:
        "knowsubnet tokenize_controllm --params {PARAMS} --model-dir results/models/{wildcards.model} "
        "--train-text {input.train} --test-text {input.test} --out results/controllm/{wildcards.model} 2> {log}"
