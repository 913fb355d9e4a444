# Data: datasets from the mirror (or the canonical sources), the triplets table, TargetKG/ControlKG splits.


rule fetch_data:
    output:
        manifest=whole_dir("data/raw/manifest.json", "data/raw"),
        wiki_valid="data/raw/wikitext-2-raw/wiki.valid.raw",
        wiki_test="data/raw/wikitext-2-raw/wiki.test.raw",
        **_optional_raw(),
    params:
        # with triplets.sources and controllm.train_text, what decides the optional files
        **stage_sections("fetch_data"),
        optional=",".join(_optional_raw()),
    log:
        "logs/fetch_data.log",
    conda:
        "../envs/knowsubnet.yaml"
    shell:
        "knowsubnet fetch_data --params {PARAMS} --out data/raw 2> {log}"


rule extract_triplets:
    input:
        manifest="data/raw/manifest.json",
        facts="data/facts/conceptnet_facts.tsv",
    output:
        "data/processed/triplets.parquet",
    params:
        **stage_sections("extract_triplets"),
    log:
        "logs/extract_triplets.log",
    conda:
        "../envs/knowsubnet.yaml"
    shell:
        "knowsubnet extract_triplets --params {PARAMS} --raw data/raw --facts {input.facts} --out {output} 2> {log}"


rule split_controls:
    """One target's TargetKG / ControlKG splits: editing one target re-runs only its own jobs."""
    input:
        user_target_files,
        triplets="data/processed/triplets.parquet",
        manifest="data/raw/manifest.json",
    output:
        whole_dir(split_summary("{target}"), "data/processed/splits/{target}"),
        split_files("{target}"),
    params:
        **stage_sections("split_controls"),
    log:
        "logs/split_controls/{target}.log",
    conda:
        "../envs/knowsubnet.yaml"
    shell:
        "knowsubnet split_controls --params {PARAMS} --triplets {input.triplets} --raw data/raw "
        "--target {wildcards.target} --out data/processed/splits/{wildcards.target} 2> {log}"
