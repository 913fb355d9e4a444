"""Compare two runs of the same targets that differ in one setting (say train.dtype): their verdicts,
headline ratios, the Jaccard overlap of their masks and their discovery wall times.

    python benchmarks/compare_runs.py RUN_A RUN_B --model smollm2-135m --targets IsA AtLocation fruit \
        [--labels fp32 bf16] [--seed 0]

RUN_A and RUN_B are project roots (or copies of their results/): each needs
results/masks/{model}/{target}/seed{seed}/{mask.safetensors,meta.json} and
results/eval/{model}/{target}/seed{seed}/metrics.json. Verdicts are checked here against the bars
of config/base.yaml (`evaluation.bars.check_bars`), so two runs of different commits are judged
alike. Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

RATIOS = (
    ("ratio_removed_targetkg", "TargetKG ×"),
    ("ratio_removed_controlkg", "ControlKG ×"),
    ("ratio_removed_controllm", "ControlLM ×"),
)


def load(root: Path, model: str, target: str, seed: int, bars: dict) -> tuple[dict, dict, dict]:
    from knowsubnet.evaluation.bars import check_bars
    from knowsubnet.method import masking

    mask_dir = root / "results" / "masks" / model / target / f"seed{seed}"
    logits, _ = masking.load_mask(mask_dir / "mask.safetensors")
    meta = json.loads((mask_dir / "meta.json").read_text())
    result = json.loads((root / "results" / "eval" / model / target / f"seed{seed}" / "metrics.json").read_text())
    return masking.binary_masks(logits), meta, check_bars(result, bars)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--targets", nargs="+", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--labels", nargs=2, default=("A", "B"))
    args = parser.parse_args(argv)
    import dataclasses

    from knowsubnet.core import config
    from knowsubnet.report import analysis

    params = config.load([ROOT / "config" / "base.yaml"], ROOT / "config" / "params.schema.yaml")
    bars = dataclasses.asdict(params.report.bars)
    a_label, b_label = args.labels
    head = ["target", "verdict " + a_label, "verdict " + b_label]
    head += [f"{name} {label}" for _, name in RATIOS for label in (a_label, b_label)]
    head += [
        "sparsity " + a_label,
        "sparsity " + b_label,
        "mask Jaccard",
        "selected step " + a_label,
        "selected step " + b_label,
        f"discovery {a_label} (min)",
        f"discovery {b_label} (min)",
        "time ratio",
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for target in args.targets:
        mask_a, meta_a, head_a = load(args.run_a, args.model, target, args.seed, bars)
        mask_b, meta_b, head_b = load(args.run_b, args.model, target, args.seed, bars)
        row = [target, head_a["verdict"], head_b["verdict"]]
        row += [f"{h[key]:.4g}" for key, _ in RATIOS for h in (head_a, head_b)]
        row += [f"{h['sparsity']:.2%}" for h in (head_a, head_b)]
        row.append(f"{analysis.jaccard(mask_a, mask_b):.3f}")
        row += [str(((m.get("selection") or {}).get("chosen") or {}).get("step", m["steps"])) for m in (meta_a, meta_b)]
        time_a, time_b = meta_a["wall_time_s"], meta_b["wall_time_s"]
        row += [f"{time_a / 60:.1f}", f"{time_b / 60:.1f}", f"{time_a / time_b:.2f}"]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
