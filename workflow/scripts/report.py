"""Stage report: tables, figures and report.md from the metrics, masks and training logs.

Params: report, run, targets, csqa (the whole params are shown in the report).
"""

from __future__ import annotations

import logging
from pathlib import Path

from knowsubnet.core.config import Params, Run
from knowsubnet.core.errors import cli_entry
from knowsubnet.report.build import build_report
from stage_params import load_params, stage_parser

log = logging.getLogger("report")


def run_files(results: Path, run: Run) -> tuple[list[Path], list[Path], list[Path], list[Path]]:
    """The per-seed metrics, masks, logs and discovery metas (and seed combinations) of models x
    targets x seeds."""
    metrics, masks, logs, metas = [], [], [], []
    for model in run.models:
        for target in run.targets:
            for seed in run.seeds:
                metrics.append(results / "eval" / model / target / f"seed{seed}" / "metrics.json")
                masks.append(results / "masks" / model / target / f"seed{seed}" / "mask.safetensors")
                logs.append(results / "masks" / model / target / f"seed{seed}" / "train_log.csv")
                metas.append(results / "masks" / model / target / f"seed{seed}" / "meta.json")
            if len(run.seeds) > 1:
                metrics.extend(sorted((results / "eval" / model / target / "combined").glob("*.json")))
    return metrics, masks, logs, metas


def csqa_run_files(results: Path, params: Params) -> list[Path]:
    """The finetune_csqa results of params `run` (CSQA-linked targets only) x `csqa.modes`."""
    run, targets = params.run, params.targets
    modes = params.csqa.modes
    seeds = params.csqa.seeds or run.seeds
    return [results / "csqa" / model / target / f"seed{seed}" / f"{mode}.json"
            for model in run.models for target in run.targets
            if isinstance(targets.get(target), dict) and "csqa" in targets[target]
            for seed in seeds for mode in modes]


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--metrics", type=Path, nargs="*", default=[],
                        help="metrics JSON files (per seed, and seed combinations)")
    parser.add_argument("--from-run", action="store_true",
                        help="take the metrics, masks and logs of params `run` from <out-dir> (used by DVC)")
    parser.add_argument("--masks", type=Path, nargs="*", default=[], help="mask.safetensors files (per seed)")
    parser.add_argument("--logs", type=Path, nargs="*", default=[], help="train_log.csv files")
    parser.add_argument("--metas", type=Path, nargs="*", default=[], help="discovery meta.json files (trade-off curves)")
    parser.add_argument("--csqa", type=Path, nargs="*", default=[],
                        help="finetune_csqa result files (results/csqa/<model>/<target>/seed<seed>/<mode>.json)")
    parser.add_argument("--out-dir", type=Path, default=Path("results"))
    parser.add_argument("--models-root", type=Path, default=None,
                        help="model directories (config.json, provenance.json); default <out-dir>/models")
    args = parser.parse_args(argv)

    params = load_params(args)
    if args.from_run:
        args.metrics, args.masks, args.logs, args.metas = run_files(args.out_dir, params.run)
        args.csqa = csqa_run_files(args.out_dir, params)
    written = build_report(args.metrics, args.masks, args.logs, out_dir=args.out_dir, params=params,
                           models_root=args.models_root, meta_paths=args.metas, csqa_paths=args.csqa)
    log.info("wrote %d files; report: %s", len(written), written["report"])


if __name__ == "__main__":
    main()
