# Models: prepare each model as a local HF directory, verbalise facts with its best templates,
# and cut WikiText-2 into its ControlLM blocks.


def is_tiny(model):
    """A model trained here (a name not in the config, the DVC generator's ${item.model}, counts as one)."""
    return config["models"].get(model, {"source": "tiny"})["source"] == "tiny"


def model_inputs(wildcards):
    """The tiny model is trained on the facts of the run's splits; pretrained models need nothing.
    A model name not in the config (the DVC generator's ${item.model}) gets the tiny model's inputs."""
    if not is_tiny(wildcards.model):
        return {}
    return {"splits": [f for t in TARGETS for f in split_files(t)],
            "text": "data/raw/wikitext-2-raw/wiki.valid.raw"}


rule prepare_model:
    input:
        unpack(model_inputs),
    output:
        config=whole_dir("results/models/{model}/config.json", "results/models/{model}"),
        provenance="results/models/{model}/provenance.json",
    params:
        spec=lambda w: section("models", w.model),
        # the tiny model trains on the facts of run.targets (prepare_model.py reads them)
        targets=lambda w: section("run", "targets") if is_tiny(w.model) else "",
        facts_arg=lambda w, input: f"--splits-dir data/processed/splits --text {input.text}" if "splits" in input.keys() else "",
    threads: 1
    log:
        "logs/prepare_model/{model}.log",
    shell:
        "{PY} workflow/scripts/prepare_model.py --params {PARAMS} --model {wildcards.model} "
        "--out results/models/{wildcards.model} {params.facts_arg} 2> {log}"


rule verbalize:
    input:
        model="results/models/{model}/config.json",
        splits=lambda w: split_files(w.target),
    output:
        "results/verbalized/{model}/{target}.parquet",
    params:
        verbalize=section("verbalize"),
    threads: 1
    resources:
        gpu=1,  # a GPU stage: on a cluster it asks for one GPU (workflow/profiles/slurm*)
    log:
        "logs/verbalize/{model}/{target}.log",
    shell:
        "{PY} workflow/scripts/verbalize.py --params {PARAMS} --model-dir results/models/{wildcards.model} "
        "--splits data/processed/splits/{wildcards.target} --out {output} 2> {log}"


rule tokenize_controllm:
    input:
        model="results/models/{model}/config.json",
        # controllm.train_text: WikiText-2 valid (default; the mirror has no train) or train (the paper)
        train=f"data/raw/wikitext-2-raw/wiki.{config['controllm'].get('train_text', 'valid')}.raw",
        test="data/raw/wikitext-2-raw/wiki.test.raw",
    output:
        train="results/controllm/{model}/train.safetensors",
        val="results/controllm/{model}/val.safetensors",
        test="results/controllm/{model}/test.safetensors",
    params:
        controllm=section("controllm"),
    log:
        "logs/tokenize_controllm/{model}.log",
    shell:
        "{PY} workflow/scripts/tokenize_controllm.py --params {PARAMS} --model-dir results/models/{wildcards.model} "
        "--train-text {input.train} --test-text {input.test} --out results/controllm/{wildcards.model} 2> {log}"
