"""Export the remaining model (subnetwork removed), or the subnetwork alone, as a Hugging Face directory.

`AutoModelForCausalLM.from_pretrained(OUT)` loads the result; OUT/README.md is its model card and
OUT/provenance.json says where it came from (knowsubnet.evaluation.export). What is kept comes from
params `export.keep` unless `--keep` is given. `--push-to-hub REPO_ID` then uploads the folder
(huggingface_hub; network and a write token needed): the pipeline's rule never does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from stage_params import load_params, stage_parser

from knowsubnet.core.errors import cli_entry
from knowsubnet.evaluation.export import KEEP, export_masked_model, push_to_hub


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--model-dir", type=Path, required=True, help="results/models/<model>")
    parser.add_argument("--mask", type=Path, required=True, help="mask.safetensors from discover_mask")
    parser.add_argument("--out", type=Path, required=True, help="directory to write")
    parser.add_argument("--keep", choices=KEEP, default=None,
                        help="remaining: remove the subnetwork; subnetwork: keep only it in masked layers "
                             "(default: params export.keep)")
    parser.add_argument("--headline", type=Path, help="evaluate_ablation's headline.json, for the model card")
    parser.add_argument("--robustness", type=Path, help="evaluate_robustness's headline.json, for the model card")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the folder to this Hugging Face model repo")
    parser.add_argument("--public", action="store_true", help="with --push-to-hub: a public repo (default private)")
    args = parser.parse_args(argv)
    params = load_params(args)
    keep = args.keep or params.export.keep
    export_masked_model(args.model_dir, args.mask, args.out, keep=keep, targets=params.targets,
                        fact_sources=list(params.triplets.sources), headline=args.headline,
                        robustness=args.robustness, bars=dataclasses.asdict(params.report.bars))
    if args.push_to_hub:
        print(push_to_hub(args.out, args.push_to_hub, private=not args.public))


if __name__ == "__main__":
    main()
