"""The tokenize_controllm stage: WikiText -> ControlLM blocks in a prepared model's tokens."""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import AutoConfig

from knowsubnet.core.config import Params
from knowsubnet.core.errors import InputError
from knowsubnet.core.io import atomic_path, read_text, sha256_file, write_json
from knowsubnet.core.provenance import stamp
from knowsubnet.data.encoding import controllm_blocks, save_blocks, text_head
from knowsubnet.models.prepare import context_length, load_tokenizer

log = logging.getLogger(__name__)


def write_controllm(model_dir: Path, train_text: Path, test_text: Path, out: Path, params: Params) -> dict:
    """Write the folder `out` (atomically): train / val / test.safetensors of ControlLM blocks in the
    model's tokens, and meta.json. val holds the LAST `controllm.max_val_blocks` blocks of the
    training text, never trained on (the ControlLM part of checkpoint selection); train the first
    ones (at most `max_train_blocks`); test the first `test_fraction` of the test text's lines."""
    settings = params.controllm
    block_size = settings.block_size

    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise InputError(f"{model_dir}: not a prepared model directory (no config.json)")
    context = context_length(AutoConfig.from_pretrained(model_dir))
    if context is not None and block_size > context:
        raise InputError(
            f"params key 'controllm.block_size' = {block_size}: longer than the model's "
            f"context of {context} tokens ({config_path})"
        )
    tokenizer = load_tokenizer(model_dir)

    test_fraction = settings.test_fraction
    counts = {}
    with atomic_path(out) as tmp:
        tmp.mkdir()
        train_all = controllm_blocks(tokenizer, read_text(train_text), block_size, None)
        n_val = min(settings.max_val_blocks, train_all.shape[0] // 2)
        n_train = train_all.shape[0] - n_val
        if settings.max_train_blocks is not None:
            n_train = min(n_train, settings.max_train_blocks)
        parts = {
            "train": (train_text, train_all[:n_train], 1.0),
            "val": (train_text, train_all[train_all.shape[0] - n_val :], 1.0),
            "test": (
                test_text,
                controllm_blocks(
                    tokenizer, text_head(read_text(test_text), test_fraction), block_size, settings.max_test_blocks
                ),
                test_fraction,
            ),
        }
        for part, (path, blocks, share) in parts.items():
            save_blocks(tmp / f"{part}.safetensors", blocks, {"source": path.name, "block_size": block_size})
            counts[part] = {
                "blocks": int(blocks.shape[0]),
                "source": str(path),
                "sha256": sha256_file(path),
                "fraction_of_lines": share,
            }
            log.info("%s: %d blocks of %d tokens from %s", part, blocks.shape[0], block_size, path)
        write_json(
            tmp / "meta.json",
            stamp(
                {"controllm": params.section("controllm")}, model_dir=str(model_dir), block_size=block_size, **counts
            ),
        )
    return counts
