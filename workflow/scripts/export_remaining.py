"""Export the remaining model (subnetwork removed), or the subnetwork alone, as a Hugging Face directory.

`AutoModelForCausalLM.from_pretrained(OUT)` loads the result; OUT/provenance.json says where it came
from (knowsubnet.evaluation.export).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from knowsubnet.core.errors import cli_entry
from knowsubnet.evaluation.export import KEEP, export_masked_model


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="results/models/<model>")
    parser.add_argument("--mask", type=Path, required=True, help="mask.safetensors from discover_mask")
    parser.add_argument("--out", type=Path, required=True, help="directory to write")
    parser.add_argument("--keep", choices=KEEP, default="remaining",
                        help="remaining: remove the subnetwork (default); subnetwork: keep only it in masked layers")
    args = parser.parse_args(argv)
    export_masked_model(args.model_dir, args.mask, args.out, keep=args.keep)


if __name__ == "__main__":
    main()
