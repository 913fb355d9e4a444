"""Stage prepare_model: a local Hugging Face model directory + provenance.json for one model.

Params: models.<model> (source tiny | gguf_wheel | hub and its settings); for source tiny also
run.targets (its training facts are the union of those targets' split files).
Pretrained sources ignore --facts/--splits-dir/--text.
"""

from __future__ import annotations

import logging
from pathlib import Path

from knowsubnet.core.errors import InputError, cli_entry
from knowsubnet.data.encoding import read_text
from knowsubnet.data.factsets import read_facts
from stage_params import load_params, stage_parser

log = logging.getLogger("prepare_model")


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--model", required=True, help="model name: a key of params 'models'")
    parser.add_argument("--out", type=Path, required=True, help="results/models/<model>")
    parser.add_argument("--facts", type=Path, nargs="+", default=[], help="fact parquet files (tiny model)")
    parser.add_argument("--splits-dir", type=Path, help="data/processed/splits: facts of run.targets (tiny model)")
    parser.add_argument("--text", type=Path, help="ordinary text for the tiny model (wiki.valid.raw)")
    args = parser.parse_args(argv)

    params = load_params(args)
    spec = params.models.get(args.model)
    if spec is None:
        raise InputError(f"params key 'models.{args.model}' is missing; known models: "
                         f"{', '.join(params.models) or 'none'}")

    facts, text = None, None
    if spec.get("source") == "tiny":
        paths = list(args.facts)
        if args.splits_dir is not None:
            paths += [args.splits_dir / target for target in params.run.targets]  # the run's split folders
        if not paths:
            raise InputError(f"model '{args.model}' is trained here (source tiny): give its facts "
                             f"with --facts or --splits-dir")
        facts = read_facts(paths)
        if args.text is not None:
            text = read_text(args.text)
        log.info("tiny model: %d facts from %d files or split folders, %d characters of text", len(facts), len(paths),
                 len(text or ""))

    from knowsubnet.models.prepare import prepare_model  # heavy imports only when run

    subset = {"models": {args.model: spec}}
    if spec.get("source") == "tiny":
        subset["run"] = {"targets": params.run.targets}
    provenance = prepare_model(args.model, spec, args.out, facts=facts, text=text,
                               seed=int(spec.get("seed", 0)), params=subset)
    summary = {k: provenance[k] for k in ("parameters", "wall_seconds", "tail_accuracy", "tail_accuracy_filtered",
                                          "tail_accuracy_best", "file_sha256", "revision") if k in provenance}
    log.info("%s: %s", args.model, summary)


if __name__ == "__main__":
    main()
