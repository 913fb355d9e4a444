"""Time CommonsenseQA feature extraction: packed questions and cached lower blocks against the plain way.

    python benchmarks/bench_csqa_features.py                      # 64 questions, a few minutes on 2 cores
    python benchmarks/bench_csqa_features.py --model-dir results/models/smollm2-135m --questions 128

The features are each choice's final hidden state at its end-of-text token (finetune_csqa's head
mode), for `--versions` model versions (original, remaining, a random removal per seed: 5 in the
demo-csqa overlay). Three ways, timed on the same questions in this process:

plain:   five "question + choice" sequences per question through the full model, once per version
         (what the stage did before: every version a full forward);
packed:  one packed sequence per question (the question once, each choice attending to it and to
         itself), through the full model, once per version;
cached:  packed, with the blocks below the mask run once and only the top `--top-blocks` blocks
         once per version (`features.head_features`, what the stage does now).

The model: `--model-dir` when given (a prepared model, e.g. results/models/smollm2-135m), else a
randomly initialised Llama of SmolLM2-135M's shape with a byte-level BPE tokenizer trained on the
questions (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from shapes import SMOLLM2_135M  # noqa: E402  (benchmarks/shapes.py, beside this script)

from knowsubnet.downstream.csqa.data import encode_questions, question_text, read_questions  # noqa: E402
from knowsubnet.downstream.csqa.features import head_features  # noqa: E402
from knowsubnet.downstream.csqa.model import gather_choices, packed_inputs  # noqa: E402
from knowsubnet.method import masking  # noqa: E402
from knowsubnet.models.top_blocks import TopBlocks  # noqa: E402


def csqa_file() -> Path:
    for path in (ROOT / "data" / "raw" / "commonsenseqa", ROOT.parent / "shared" / "data" / "commonsenseqa"):
        if (path / "train_rand_split.jsonl").is_file():
            return path / "train_rand_split.jsonl"
    raise SystemExit("no CommonsenseQA train file: run fetch_data (or keep the data mirror at ../shared/data)")


def smollm2_shaped(questions):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [question_text(q.stem, c) for q in questions for c in q.choices]
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=4000, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    config = LlamaConfig(**SMOLLM2_135M, eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config).eval(), tokenizer


@torch.no_grad()
def plain(model, tokenizer, questions, batch: int) -> None:
    eos = tokenizer.eos_token_id
    for start in range(0, len(questions), batch):
        seqs = [
            tokenizer(question_text(q.stem, c), add_special_tokens=False)["input_ids"] + [eos]
            for q in questions[start : start + batch]
            for c in q.choices
        ]
        width = max(map(len, seqs))
        ids = torch.tensor([s + [eos] * (width - len(s)) for s in seqs])
        hidden = model.base_model(input_ids=ids).last_hidden_state
        hidden[torch.arange(len(seqs)), torch.tensor([len(s) - 1 for s in seqs])]


@torch.no_grad()
def packed(model, enc, batch: int) -> None:
    for start in range(0, len(enc.ids), batch):
        inputs = packed_inputs(enc, range(start, min(start + batch, len(enc.ids))))
        hidden = model.base_model(
            input_ids=inputs["input_ids"], position_ids=inputs["position_ids"], attention_mask=inputs["attention_mask"]
        ).last_hidden_state
        gather_choices(hidden, inputs["last"])


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="a prepared model (default: a random SmolLM2-shaped Llama)")
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--versions", type=int, default=5, help="model versions (original, remaining, randoms)")
    parser.add_argument("--top-blocks", type=int, default=6, help="masked blocks (the demo: top 6 of 30)")
    parser.add_argument("--batch", type=int, default=16, help="questions per forward")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    questions = read_questions(csqa_file())[: args.questions]
    if args.model_dir is not None:
        from knowsubnet.models.prepare import load_model

        model, tokenizer = load_model(args.model_dir, "cpu")
        model.eval()
    else:
        model, tokenizer = smollm2_shaped(questions)
    layers = masking.find_maskable_layers(model, args.top_blocks)
    first = min(layer.block for layer in layers)
    gen = torch.Generator().manual_seed(0)
    versions = {"original": {}}
    for v in range(1, args.versions):  # 2 % of each masked matrix removed, like a demo mask
        masks = {layer.name: torch.rand(layer.weight.shape, generator=gen) < 0.02 for layer in layers}
        versions[f"v{v}"] = masking.apply_mask(layers, masks, "weight")
    enc = encode_questions(tokenizer, questions, 64)
    plain_tokens = sum(
        len(tokenizer(question_text(q.stem, c), add_special_tokens=False)["input_ids"]) + 1
        for q in questions
        for c in q.choices
    )
    packed_tokens = sum(int(ids.shape[0]) for ids in enc.ids)

    t_plain = args.versions * timed(plain, model, tokenizer, questions, args.batch)
    t_packed = args.versions * timed(packed, model, enc, args.batch)
    t_cached = timed(
        lambda: head_features(
            TopBlocks(model, first), {"q": enc}, versions, args.batch, torch.device("cpu"), progress=False
        )
    )
    # csqa.dtype bfloat16: the same cached path on bf16 copies of the top blocks
    t_bf16 = timed(
        lambda: head_features(
            TopBlocks(model, first, torch.bfloat16),
            {"q": enc},
            versions,
            args.batch,
            torch.device("cpu"),
            progress=False,
        )
    )
    n = len(questions)
    print(
        f"{type(model).__name__}, {len(layers)} masked matrices in the top {args.top_blocks} blocks, "
        f"{n} CSQA questions, {args.versions} versions, {args.threads} threads"
    )
    print(
        f"tokens per question: plain {plain_tokens / n:.1f}, packed {packed_tokens / n:.1f} "
        f"(ratio packed / plain {packed_tokens / plain_tokens:.2f})"
    )
    for name, t in (("plain", t_plain), ("packed", t_packed), ("cached", t_cached), ("cached bf16", t_bf16)):
        print(f"{name:>11}: {1000 * t / n:8.1f} ms per question (all versions)   ratio vs plain {t / t_plain:.3f}")
    print(
        f"the demo-csqa overlay's 10,089 questions per target: plain {t_plain / n * 10089 / 60:.0f} min, "
        f"cached {t_cached / n * 10089 / 60:.0f} min, cached bf16 {t_bf16 / n * 10089 / 60:.0f} min at this speed"
    )


if __name__ == "__main__":
    main()
