"""Exporting a masked model: the remaining model (subnetwork removed), or the subnetwork alone, as a
Hugging Face directory that `AutoModelForCausalLM.from_pretrained` loads; its provenance.json says
where it came from (model directory, mask file and its sha256, sparsity, weights zeroed)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoConfig

from knowsubnet.core.io import atomic_path, sha256_file, write_json
from knowsubnet.core.provenance import stamp
from knowsubnet.evaluation.ablation import mask_layers
from knowsubnet.method import masking
from knowsubnet.models.prepare import load_model

log = logging.getLogger(__name__)

KEEP = ("remaining", "subnetwork")


def export_masked_model(model_dir: Path, mask: Path, out: Path, keep: str = "remaining") -> dict:
    """Write the folder `out` (atomically): the model of `model_dir` with the subnetwork of `mask`
    zeroed (`keep="remaining"`) or with only it kept in the masked layers (`keep="subnetwork"`),
    its tokenizer and provenance.json; returns the provenance."""
    # keep the weights' stored dtype (a bf16 model stays bf16; zeroing is exact in any dtype)
    stored = getattr(AutoConfig.from_pretrained(model_dir), "dtype", None)
    dtype = stored if isinstance(stored, torch.dtype) else torch.float32
    model, tokenizer = load_model(model_dir, torch.device("cpu"), dtype)
    logits, metadata = masking.load_mask(mask)
    layers, granularity = mask_layers(model, logits, metadata, source=str(mask))
    binary = masking.binary_masks(logits)
    sparsity = masking.sparsity(model, layers, binary, granularity)

    with atomic_path(out) as tmp:
        # masked_weights zeroes in place and restores on exit: save while it is applied
        with masking.masked_weights(layers, binary, granularity, keep=keep):
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        provenance = stamp(
            None, source_model_dir=str(model_dir), mask=str(mask), mask_sha256=sha256_file(mask),
            mask_metadata=metadata, keep=keep, sparsity=sparsity,
            weights_zeroed=masking.subnetwork_size(layers, binary, granularity) if keep == "remaining"
            else sum(l.weight.numel() for l in layers) - masking.subnetwork_size(layers, binary, granularity))
        write_json(tmp / "provenance.json", provenance)
    log.info("wrote %s (%s; sparsity of masked layers %.4f)", out, keep, sparsity["masked_layers"])
    return provenance
