"""Stage finetune_csqa: CommonsenseQA finetuning of the original / remaining / random-removed models.

Params: csqa (every key); targets.<target> (the selector, for the linked questions it picks);
mask.top_k_blocks (when the mask file's metadata does not record it).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from knowsubnet.core.errors import InputError, cli_entry
from knowsubnet.core.io import write_json
from knowsubnet.core.provenance import stamp
from knowsubnet.data.splits import SPLITS, select_target
from knowsubnet.downstream import csqa
from knowsubnet.method import masking
from knowsubnet.models.prepare import load_model, pick_device
from stage_params import load_params, stage_parser

log = logging.getLogger("finetune_csqa")


def _read_parquet(path: Path, what: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read {what} ({err})") from None


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--model", required=True, help="model name (the {model} wildcard)")
    parser.add_argument("--target", required=True, help="target name (the {target} wildcard)")
    parser.add_argument("--seed", type=int, required=True, help="mask seed; the finetuning seed unless csqa.seed")
    parser.add_argument("--mode", required=True, choices=csqa.MODES, help="finetuning mode")
    parser.add_argument("--model-dir", type=Path, required=True, help="results/models/<model>")
    parser.add_argument("--mask", type=Path, required=True, help="mask.safetensors")
    parser.add_argument("--triplets", type=Path, required=True, help="data/processed/triplets.parquet")
    parser.add_argument("--splits", type=Path, required=True, help="data/processed/splits/<target>")
    parser.add_argument("--csqa-dir", type=Path, required=True, help="folder with {train,dev}_rand_split.jsonl")
    parser.add_argument("--out", type=Path, required=True, help="results json to write")
    args = parser.parse_args(argv)

    params = load_params(args)
    settings = params.csqa
    spec = params.targets.get(args.target)
    if spec is None:
        raise InputError(f"params key 'targets': no target named {args.target!r}")
    device = pick_device(settings.device, key="csqa.device")
    seed = args.seed if settings.seed is None else settings.seed
    start = time.monotonic()

    triplets = _read_parquet(args.triplets, "the triplets table")
    target_facts = pd.concat([_read_parquet(args.splits / f"targetkg_{s}.parquet", "a TargetKG split")
                              for s in SPLITS]).drop_duplicates()
    selected = select_target(triplets, args.target, spec)
    model, tokenizer = load_model(args.model_dir, "cpu")
    logits, metadata = masking.load_mask(args.mask)
    checkpoint = args.out.with_name(f".{args.out.name}.ckpt")
    result = csqa.finetune_csqa(
        model, tokenizer, logits, metadata, triplets, target_facts, selected,
        args.csqa_dir / "train_rand_split.jsonl", args.csqa_dir / "dev_rand_split.jsonl", args.mode, settings,
        seed, device=device, checkpoint_path=checkpoint, mask_source=str(args.mask))
    result = {"model": args.model, "target": args.target, "seed": args.seed, **result, "mask": str(args.mask),
              "provenance": stamp({"csqa": params.section("csqa"), "target": spec}, device=str(device),
                                  wall_time_s=round(time.monotonic() - start, 3))}
    write_json(args.out, result)
    checkpoint.unlink(missing_ok=True)
    for variant in csqa.VARIANTS:
        groups = result["variants"][variant]["groups"]
        log.info("%s: %s", variant, ", ".join(f"{g} {groups[g]['acc']:.3f} (n={groups[g]['n']})" for g in csqa.GROUPS))


if __name__ == "__main__":
    main()
