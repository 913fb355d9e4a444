"""Stage report: tables, figures and report.md from the metrics, masks and training logs.

Params: report, run, targets, csqa (the whole params are shown in the report). With baselines, the
section comparing them with the learned mask.
"""

from __future__ import annotations

from pathlib import Path

from knowsubnet.core.errors import cli_entry
from knowsubnet.report.build import build_report
from stage_params import load_params, stage_parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--metrics", type=Path, nargs="*", default=[],
                        help="metrics JSON files (per seed, and seed combinations)")
    parser.add_argument("--masks", type=Path, nargs="*", default=[], help="mask.safetensors files (per seed)")
    parser.add_argument("--logs", type=Path, nargs="*", default=[], help="train_log.csv files")
    parser.add_argument("--metas", type=Path, nargs="*", default=[], help="discovery meta.json files (trade-off curves)")
    parser.add_argument("--csqa", type=Path, nargs="*", default=[],
                        help="finetune_csqa result files (results/csqa/<model>/<target>/seed<seed>/<mode>.json)")
    parser.add_argument("--robustness", type=Path, nargs="*", default=[],
                        help="evaluate_robustness results (results/robustness/<model>/<target>/seed<seed>/robustness.json)")
    parser.add_argument("--baselines", type=Path, nargs="*", default=[],
                        help="remove_baseline meta.json files (results/baselines/<model>/<target>/<method>/seed<seed>/)")
    parser.add_argument("--baseline-metrics", type=Path, nargs="*", default=[],
                        help="evaluate_baseline metrics (…/seed<seed>/eval/metrics.json)")
    parser.add_argument("--baseline-robustness", type=Path, nargs="*", default=[],
                        help="baseline_robustness results (…/seed<seed>/robustness/robustness.json)")
    parser.add_argument("--out-dir", type=Path, default=Path("results"))
    parser.add_argument("--models-root", type=Path, default=None,
                        help="model directories (config.json, provenance.json); default <out-dir>/models")
    args = parser.parse_args(argv)
    build_report(args.metrics, args.masks, args.logs, params=load_params(args), out_dir=args.out_dir,
                 models_root=args.models_root, meta_paths=args.metas, csqa_paths=args.csqa,
                 robustness_paths=args.robustness, baseline_meta_paths=args.baselines,
                 baseline_metrics_paths=args.baseline_metrics, baseline_robustness_paths=args.baseline_robustness)


if __name__ == "__main__":
    main()
