# Data: datasets from the mirror (or the canonical sources), the triplets table, TargetKG/ControlKG splits.


def _optional_raw():
    """Files fetched only when the params need them (knowsubnet.fetch.optional_files)."""
    out = {}
    if "wordnet" in config["triplets"]["sources"]:
        out["wordnet"] = ["data/raw/wordnet-3.0/data.noun", "data/raw/wordnet-3.0/index.noun"]
    if config["controllm"].get("train_text", "valid") == "train":
        out["wiki_train"] = "data/raw/wikitext-2-raw/wiki.train.raw"
    return out


rule fetch_data:
    output:
        manifest="data/raw/manifest.json",
        wiki_valid="data/raw/wikitext-2-raw/wiki.valid.raw",
        wiki_test="data/raw/wikitext-2-raw/wiki.test.raw",
        **_optional_raw(),
    params:
        data=section("data"),
        lama=config["triplets"].get("lama_path") or "",
        optional=",".join(_optional_raw()),
    log:
        "logs/fetch_data.log",
    shell:
        "{PY} workflow/scripts/fetch_data.py --params {PARAMS} --out data/raw 2> {log}"


rule extract_triplets:
    input:
        manifest="data/raw/manifest.json",
        facts="data/facts/conceptnet_facts.tsv",
    output:
        "data/processed/triplets.parquet",
    params:
        triplets=section("triplets"),
    log:
        "logs/extract_triplets.log",
    shell:
        "{PY} workflow/scripts/extract_triplets.py --params {PARAMS} --raw data/raw --out {output} 2> {log}"


rule split_controls:
    input:
        triplets="data/processed/triplets.parquet",
        manifest="data/raw/manifest.json",
    output:
        [split_files(target) for target in config["targets"]],
        summary="data/processed/splits/summary.json",
    params:
        targets=section("targets"),
        split=section("split"),
    log:
        "logs/split_controls.log",
    shell:
        "{PY} workflow/scripts/split_controls.py --params {PARAMS} --triplets {input.triplets} "
        "--raw data/raw --out data/processed/splits 2> {log}"
