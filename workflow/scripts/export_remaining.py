"""Export the remaining model (subnetwork removed), or the subnetwork alone, as a Hugging Face directory.

`AutoModelForCausalLM.from_pretrained(OUT)` loads the result; OUT/provenance.json says where it came from.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from knowsubnet.core.errors import cli_entry
from knowsubnet.core.io import atomic_path, sha256_file, write_json
from knowsubnet.core.provenance import stamp
from knowsubnet.evaluation import ablation
from knowsubnet.method import masking

log = logging.getLogger("export_remaining")


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="results/models/<model>")
    parser.add_argument("--mask", type=Path, required=True, help="mask.safetensors from discover_mask")
    parser.add_argument("--out", type=Path, required=True, help="directory to write")
    parser.add_argument("--keep", choices=("remaining", "subnetwork"), default="remaining",
                        help="remaining: remove the subnetwork (default); subnetwork: keep only it in masked layers")
    args = parser.parse_args(argv)

    from transformers import AutoConfig

    from knowsubnet.models.prepare import load_model  # the model layer; heavy imports only when run

    # keep the weights' stored dtype (a bf16 model stays bf16; zeroing is exact in any dtype)
    stored = getattr(AutoConfig.from_pretrained(args.model_dir), "dtype", None)
    dtype = stored if isinstance(stored, torch.dtype) else torch.float32
    model, tokenizer = load_model(args.model_dir, torch.device("cpu"), dtype)
    logits, metadata = masking.load_mask(args.mask)
    layers, granularity = ablation.mask_layers(model, logits, metadata, source=str(args.mask))
    binary = masking.binary_masks(logits)
    sparsity = masking.sparsity(model, layers, binary, granularity)

    with atomic_path(args.out) as tmp:
        # masked_weights zeroes in place and restores on exit: save while it is applied
        with masking.masked_weights(layers, binary, granularity, keep=args.keep):
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "provenance.json", stamp(
            None, source_model_dir=str(args.model_dir), mask=str(args.mask), mask_sha256=sha256_file(args.mask),
            mask_metadata=metadata, keep=args.keep, sparsity=sparsity,
            weights_zeroed=masking.subnetwork_size(layers, binary, granularity) if args.keep == "remaining"
            else sum(l.weight.numel() for l in layers) - masking.subnetwork_size(layers, binary, granularity)))
    log.info("wrote %s (%s; sparsity of masked layers %.4f)", args.out, args.keep, sparsity["masked_layers"])


if __name__ == "__main__":
    main()
