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

from pathlib import Path

from knowsubnet.core.errors import cli_entry
from knowsubnet.models.controllm import write_controllm
from stage_params import load_params, stage_parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--model-dir", type=Path, required=True, help="results/models/<model>")
    parser.add_argument("--train-text", type=Path, required=True, help="wiki.valid.raw or wiki.train.raw")
    parser.add_argument("--test-text", type=Path, required=True, help="wiki.test.raw")
    parser.add_argument("--out", type=Path, required=True, help="results/controllm/<model>")
    args = parser.parse_args(argv)
    write_controllm(args.model_dir, args.train_text, args.test_text, args.out, load_params(args))


if __name__ == "__main__":
    main()
