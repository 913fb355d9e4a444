"""Stage tokenize_controllm: WikiText-2 as ControlLM blocks of token ids, with one model's tokenizer.

Params: controllm.block_size, controllm.max_train_blocks, controllm.max_val_blocks,
controllm.max_test_blocks, controllm.test_fraction (the first share of the test text's lines; the
paper: 0.2). Which text the train blocks come from (controllm.train_text: WikiText-2 valid or
train) is the --train-text path. Writes the folder --out (atomically): train.safetensors,
val.safetensors and test.safetensors (key `blocks`, int64 [n_blocks, block_size]) and meta.json
(counts, provenance). val holds the LAST blocks of the training text, never trained on (the
ControlLM part of checkpoint selection); the objective trains on the first ones.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from knowsubnet.core.errors import InputError, cli_entry
from knowsubnet.core.io import atomic_path, sha256_file, write_json
from knowsubnet.core.provenance import stamp
from stage_params import load_params, stage_parser

log = logging.getLogger("tokenize_controllm")


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the text ({err})") from None


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--model-dir", type=Path, required=True, help="results/models/<model>")
    parser.add_argument("--train-text", type=Path, required=True, help="wiki.valid.raw or wiki.train.raw")
    parser.add_argument("--test-text", type=Path, required=True, help="wiki.test.raw")
    parser.add_argument("--out", type=Path, required=True, help="results/controllm/<model>")
    args = parser.parse_args(argv)

    params = load_params(args)
    settings = params["controllm"]
    block_size = int(settings["block_size"])

    from knowsubnet.data.encoding import controllm_blocks, save_blocks, text_head  # heavy imports only when run
    from knowsubnet.models.prepare import load_tokenizer

    config_path = args.model_dir / "config.json"
    if not config_path.is_file():
        raise InputError(f"{args.model_dir}: not a prepared model directory (no config.json)")
    config = json.loads(config_path.read_text())
    context = next((config[k] for k in ("n_positions", "max_position_embeddings") if k in config), None)
    if context is not None and block_size > context:
        raise InputError(f"params key 'controllm.block_size' = {block_size}: longer than the model's "
                         f"context of {context} tokens ({config_path})")
    tokenizer = load_tokenizer(args.model_dir)

    test_fraction = float(settings.get("test_fraction", 1.0))
    counts = {}
    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        train_all = controllm_blocks(tokenizer, read_text(args.train_text), block_size, None)
        n_val = min(int(settings.get("max_val_blocks") or 0), train_all.shape[0] // 2)
        n_train = train_all.shape[0] - n_val
        if settings.get("max_train_blocks") is not None:
            n_train = min(n_train, int(settings["max_train_blocks"]))
        parts = {"train": (args.train_text, train_all[:n_train], 1.0),
                 "val": (args.train_text, train_all[train_all.shape[0] - n_val:], 1.0),
                 "test": (args.test_text,
                          controllm_blocks(tokenizer, text_head(read_text(args.test_text), test_fraction),
                                           block_size, settings.get("max_test_blocks")), test_fraction)}
        for part, (path, blocks, share) in parts.items():
            save_blocks(tmp / f"{part}.safetensors", blocks, {"source": path.name, "block_size": block_size})
            counts[part] = {"blocks": int(blocks.shape[0]), "source": str(path), "sha256": sha256_file(path),
                            "fraction_of_lines": share}
            log.info("%s: %d blocks of %d tokens from %s", part, blocks.shape[0], block_size, path)
        write_json(tmp / "meta.json", stamp({"controllm": settings}, model_dir=str(args.model_dir),
                                            block_size=block_size, **counts))


if __name__ == "__main__":
    main()
