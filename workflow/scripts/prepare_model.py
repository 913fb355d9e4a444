"""Stage prepare_model: a local Hugging Face model directory + provenance.json for one model.

Params: models.<model> (source tiny | gguf_wheel | hub and its settings); for source tiny also
run.targets (its training facts are the union of those targets' split files).
Pretrained sources ignore --facts/--splits-dir/--text (knowsubnet.models.prepare.prepare_from_params).
"""

from __future__ import annotations

from pathlib import Path

from knowsubnet.core.errors import cli_entry
from knowsubnet.models.prepare import prepare_from_params
from stage_params import load_params, stage_parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--model", required=True, help="model name: a key of params 'models'")
    parser.add_argument("--out", type=Path, required=True, help="results/models/<model>")
    parser.add_argument("--facts", type=Path, nargs="+", default=[], help="fact parquet files (tiny model)")
    parser.add_argument("--splits-dir", type=Path, help="data/processed/splits: facts of run.targets (tiny model)")
    parser.add_argument("--text", type=Path, help="ordinary text for the tiny model (wiki.valid.raw)")
    args = parser.parse_args(argv)
    prepare_from_params(load_params(args), model=args.model, out=args.out, facts=args.facts,
                        splits_dir=args.splits_dir, text=args.text)


if __name__ == "__main__":
    main()
