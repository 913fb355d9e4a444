"""The tiny preset's model: a small GPT-2 trained here until it has memorised the run's facts.

Recipe (all from `spec`, a `models.<name>` params entry, over DEFAULTS):
1. Verbalise every fact with EVERY template of its relation (so that picking the best template per
   fact later is meaningful), plus ordinary text (WikiText-2 valid, first `text_chars` characters).
2. Train a byte-level BPE tokenizer (GPT-2 pre-tokenisation, `<|endoftext|>` as eos/bos/unk/pad)
   of about `vocab_size` tokens on those sentences and the text.
3. Train a GPT-2 from scratch (no dropout) with AdamW on the fact sentences (by default only their
   tail tokens are scored: `prompt_weight` 0, `tail_weight` 1; the logits are computed only where
   a token is scored) and, weighted by `text_weight`, on packed `text_block`-token text blocks.
4. Every `eval_every` steps measure tail accuracy (all tail tokens top-1 under teacher forcing) on
   a fixed sample of `probe_sentences` sentences; when it passes, on all of them. Stop when the
   *filtered* accuracy over all (fact, template) sentences reaches `target_accuracy`, or at
   `max_steps`.

Why filtered: ConceptNet has one-to-many facts (orange IsA fruit, orange IsA colour). With the
same prompt, a model can put top-1 on only one of the tails, so strict accuracy is capped below 1
(about 0.9 for 1,500 facts of the paper's ControlKG). Filtered accuracy (as in LAMA's filtered
evaluation) counts a tail token correct when it is the next token of any tail of a fact with the
same prompt and the same tail prefix. Both are recorded, over all templates and for the best
template per fact (lowest tail NLL, as `verbalize` picks it), with the strict ceiling.

Randomness: the weights come from `seed` under a forked RNG, batches from a `torch.Generator`,
there is no dropout, deterministic algorithms are on and the thread count is fixed (`threads`)
while training: on CPU, two runs with the same seed and inputs give bit-identical weights.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from knowsubnet.core.errors import InputError
from knowsubnet.core.progress import progress_bar
from knowsubnet.data.encoding import IGNORE, FactSet, controllm_blocks, tokenize_facts
from knowsubnet.data.relations import Verbalizer, candidate_sentences

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"

DEFAULTS: dict[str, Any] = {
    "vocab_size": 4096,
    "n_layer": 4,
    "n_embd": 128,
    "n_head": 4,
    "n_positions": 128,
    "text_chars": 200_000,  # characters of ordinary text to train on (null: all)
    "text_block": 64,  # tokens per packed text sequence
    "batch_facts": 128,  # fact sentences per step
    "batch_text": 8,  # text blocks per step
    "text_weight": 0.5,  # weight of the text loss against the fact loss
    "tail_weight": 1.0,  # weight of a fact sentence's tail tokens in its loss
    "prompt_weight": 0.0,  # weight of its prompt tokens (0: the fact loss is on the tail only)
    "lr": 3.0e-3,
    "weight_decay": 0.0,
    "warmup_steps": 50,
    "max_steps": 3000,
    "eval_every": 50,
    "probe_sentences": 2048,  # sentences checked every eval_every steps; all of them once these pass
    "target_accuracy": 0.95,
    "eval_batch_size": 512,
    "threads": 1,  # intra-op CPU threads while training (fixed: same weights everywhere)
}


def resolve_spec(spec: dict | None) -> dict[str, Any]:
    spec = {k: v for k, v in (spec or {}).items() if k not in ("source", "seed")}
    unknown = sorted(set(spec) - set(DEFAULTS))
    if unknown:
        raise InputError(f"tiny model spec key '{unknown[0]}' is not known; expected some of {', '.join(DEFAULTS)}")
    out = {**DEFAULTS, **spec}
    for key in (
        "vocab_size",
        "n_layer",
        "n_embd",
        "n_head",
        "n_positions",
        "text_block",
        "batch_facts",
        "max_steps",
        "eval_every",
        "eval_batch_size",
        "threads",
        "probe_sentences",
    ):
        if not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < 1:
            raise InputError(f"tiny model spec key '{key}' = {out[key]!r}: expected a positive integer")
    if out["n_embd"] % out["n_head"]:
        raise InputError(f"tiny model spec: n_embd {out['n_embd']} must be a multiple of n_head {out['n_head']}")
    if not 0 < float(out["target_accuracy"]) <= 1:
        raise InputError(f"tiny model spec key 'target_accuracy' = {out['target_accuracy']!r}: expected (0, 1]")
    if out["text_block"] > out["n_positions"]:
        raise InputError(f"tiny model spec: text_block {out['text_block']} exceeds n_positions {out['n_positions']}")
    return out


# -- data ---------------------------------------------------------------------------------------


def fact_sentences(facts: pd.DataFrame, verbalizer: Verbalizer | None = None) -> pd.DataFrame:
    """Every fact with every template of its relation: uuid, template_id, prompt, tail_text."""
    if facts is None or len(facts) == 0:
        raise InputError("tiny model: no facts to train on; expected the run's split files (--facts/--splits-dir)")
    facts = facts.drop_duplicates("uuid", keep="first")
    return candidate_sentences(facts, verbalizer, source="tiny model facts").reset_index(drop=True)


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int):
    """A byte-level BPE tokenizer (GPT-2 pre-tokenisation) wrapped as a GPT2TokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(texts, trainer)
    return GPT2TokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS,
        bos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        model_max_length=model_max_length,
        add_prefix_space=False,
    )


@contextlib.contextmanager
def _deterministic(threads: int):
    """Deterministic algorithms and a fixed intra-op thread count, restored afterwards.

    A fixed count makes the float reductions (and so the weights) the same on every machine, and
    one thread is also the fastest for a model this small: with two threads on two busy cores,
    OpenMP's spinning barriers made steps up to 18x slower here.
    """
    previous = torch.are_deterministic_algorithms_enabled()
    previous_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.set_num_threads(previous_threads)


def build_model(tokenizer, spec: dict, seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    eos = tokenizer.convert_tokens_to_ids(EOS)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=spec["n_positions"],
        n_embd=spec["n_embd"],
        n_layer=spec["n_layer"],
        n_head=spec["n_head"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    return model


class _Sentences:
    """Tokenised fact sentences: LM inputs/targets for training, a FactSet for tail accuracy."""

    def __init__(self, tokenizer, sentences: pd.DataFrame, max_length: int):
        labels = [f"{u} (template {t})" for u, t in zip(sentences["uuid"], sentences["template_id"])]
        pairs = tokenize_facts(tokenizer, sentences["prompt"].tolist(), sentences["tail_text"].tolist(), labels)
        width = max(len(p) + len(t) - 1 for p, t in pairs)
        if width > max_length:
            i = max(range(len(pairs)), key=lambda k: len(pairs[k][0]) + len(pairs[k][1]))
            raise InputError(
                f"fact {labels[i]}: {width + 1} tokens, longer than the tiny model's n_positions {max_length}"
            )
        n = len(pairs)
        pad = tokenizer.pad_token_id
        self.inputs = torch.full((n, width), pad, dtype=torch.long)
        self.lm_targets = torch.full((n, width), IGNORE, dtype=torch.long)
        self.tail_targets = torch.full((n, width), IGNORE, dtype=torch.long)
        for i, (p, t) in enumerate(pairs):
            seq = torch.tensor(p + t, dtype=torch.long)
            length = len(seq) - 1
            self.inputs[i, :length] = seq[:-1]
            self.lm_targets[i, :length] = seq[1:]
            self.tail_targets[i, len(p) - 1 : length] = seq[len(p) :]
        self.lengths = (self.lm_targets != IGNORE).sum(dim=1)
        self.factset = FactSet(self.inputs, self.tail_targets, labels)
        self.alternatives = _alternatives(sentences["prompt"].tolist(), pairs, width)

    def __len__(self) -> int:
        return self.inputs.shape[0]


def _alternatives(prompts: list[str], pairs: list[tuple[list[int], list[int]]], width: int) -> torch.Tensor:
    """[N, T, K] for filtered accuracy: the next tokens of every tail of a fact with the same prompt
    that shares this tail's prefix, at each tail-predicting position (-100 padding)."""
    groups: dict[str, list[tuple[int, ...]]] = defaultdict(list)
    for prompt, (_, tail) in zip(prompts, pairs):
        groups[prompt].append(tuple(tail))
    allowed: list[list[set[int]]] = []
    for prompt, (_, tail) in zip(prompts, pairs):
        tails = set(groups[prompt])
        allowed.append([{s[j] for s in tails if len(s) > j and s[:j] == tuple(tail[:j])} for j in range(len(tail))])
    k = max(len(a) for row in allowed for a in row)
    alt = torch.full((len(pairs), width, k), IGNORE, dtype=torch.long)
    for i, ((p, _), row) in enumerate(zip(pairs, allowed)):
        for j, options in enumerate(row):
            alt[i, len(p) - 1 + j, : len(options)] = torch.tensor(sorted(options), dtype=torch.long)
    return alt


def _text_ids(tokenizer, text: str | None, block: int, n_positions: int) -> torch.Tensor:
    if not text:
        return torch.empty((0, block), dtype=torch.long)
    try:
        return controllm_blocks(tokenizer, text, block)
    except InputError:
        return torch.empty((0, block), dtype=torch.long)


# -- evaluation ---------------------------------------------------------------------------------


@torch.no_grad()
def _tail_predictions(model, factset: FactSet, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean tail CE [N] float32 and the top-1 token at every tail-predicting position [N, T] (-100
    elsewhere). The trainer's own monitor: filtered accuracy needs the prediction at every position,
    and `models` sits below `scoring`. Facts run in batches of similar length."""
    n, width = factset.input_ids.shape
    nll = torch.zeros(n, dtype=torch.float32)
    preds = torch.full((n, width), IGNORE, dtype=torch.long)
    order = torch.sort(factset.lengths, stable=True).indices
    for index in (order[i : i + batch_size] for i in range(0, n, batch_size)):
        t = int(factset.lengths[index].max())
        ids, tgt = factset.input_ids[index, :t], factset.targets[index, :t]
        sel = tgt != IGNORE
        hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state
        logits = model.get_output_embeddings()(hidden[sel]).float()
        ce = F.cross_entropy(logits, tgt[sel], reduction="none")
        per_fact = torch.zeros(len(index), dtype=torch.float32).index_add_(0, sel.nonzero()[:, 0], ce)
        nll[index] = per_fact / sel.sum(dim=1).clamp_min(1)
        top = torch.full_like(tgt, IGNORE)
        top[sel] = logits.argmax(dim=-1)
        preds[index, :t] = top
    return nll, preds


@torch.no_grad()
def probe_accuracy(model, data: _Sentences, index: torch.Tensor, batch_size: int) -> float:
    """Filtered tail accuracy over the sentences `index`."""
    was_training = model.training
    model.eval()
    sub = data.factset.subset(index)
    _, preds = _tail_predictions(model, sub, batch_size)
    model.train(was_training)
    alt = data.alternatives[index, : preds.shape[1]]
    tail = sub.targets != IGNORE
    hit = (preds.unsqueeze(-1) == alt).any(dim=-1)
    return float((hit | ~tail).all(dim=1).float().mean())


@torch.no_grad()
def tail_accuracy(model, data: _Sentences, sentences: pd.DataFrame, batch_size: int) -> dict[str, float]:
    """Strict and filtered tail accuracy over all sentences and for the best template per fact."""
    was_training = model.training
    model.eval()
    nll, preds = _tail_predictions(model, data.factset, batch_size)
    model.train(was_training)
    tail = data.tail_targets != IGNORE
    strict = ((preds == data.tail_targets) | ~tail).all(dim=1)
    hit = (preds.unsqueeze(-1) == data.alternatives).any(dim=-1)
    filtered = (hit | ~tail).all(dim=1)
    frame = pd.DataFrame(
        {
            "uuid": sentences["uuid"].to_numpy(),
            "template_id": sentences["template_id"].to_numpy(),
            "nll": nll.double().numpy(),
            "strict": strict.numpy(),
            "filtered": filtered.numpy(),
        }
    )
    best = frame.sort_values(["uuid", "nll", "template_id"], kind="mergesort").drop_duplicates("uuid")
    # Strict ceiling: one top-1 tail per prompt can be right.
    prompts = sentences["prompt"] + "\x00" + sentences["template_id"].astype(str)
    ceiling = prompts.nunique() / len(prompts)
    return {
        "tail_accuracy": float(strict.float().mean()),
        "tail_accuracy_filtered": float(filtered.float().mean()),
        "tail_accuracy_best": float(best["strict"].mean()),
        "tail_accuracy_best_filtered": float(best["filtered"].mean()),
        "tail_accuracy_ceiling": float(ceiling),
        "tail_ppl": float(math.exp(frame["nll"].mean())),
        "tail_ppl_best": float(math.exp(best["nll"].mean())),
    }


# -- training -----------------------------------------------------------------------------------


def train(
    facts: pd.DataFrame,
    text: str | None,
    spec: dict | None = None,
    seed: int = 0,
    *,
    verbalizer: Verbalizer | None = None,
    progress: bool = True,
):
    """Train the tiny model; returns (model, tokenizer, stats)."""
    spec = resolve_spec(spec)
    started = time.perf_counter()
    sentences = fact_sentences(facts, verbalizer)
    text = text or ""
    if spec["text_chars"] is not None:
        text = text[: int(spec["text_chars"])]
    tok_corpus = [p + t for p, t in zip(sentences["prompt"], sentences["tail_text"])] + text.splitlines()
    tokenizer = train_tokenizer(tok_corpus, spec["vocab_size"], spec["n_positions"])
    data = _Sentences(tokenizer, sentences, spec["n_positions"])
    blocks = _text_ids(tokenizer, text, spec["text_block"], spec["n_positions"])
    log.info(
        "tiny model: %d facts x templates = %d sentences, %d text blocks of %d tokens, vocab %d",
        sentences["uuid"].nunique(),
        len(data),
        len(blocks),
        spec["text_block"],
        len(tokenizer),
    )

    model = build_model(tokenizer, spec, seed)
    model.train()
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": float(spec["weight_decay"])}, {"params": no_decay, "weight_decay": 0.0}],
        lr=float(spec["lr"]),
        betas=(0.9, 0.98),
        eps=1e-8,
    )
    warmup = max(1, int(spec["warmup_steps"]))
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: min(1.0, (s + 1) / warmup))
    gen = torch.Generator().manual_seed(seed)
    n, bf = len(data), min(int(spec["batch_facts"]), len(data))
    perm, cursor = torch.randperm(n, generator=gen), 0
    target = float(spec["target_accuracy"])
    tail_w, prompt_w = float(spec["tail_weight"]), float(spec["prompt_weight"])
    text_w = float(spec["text_weight"]) if len(blocks) and spec["batch_text"] else 0.0
    probe_size = min(int(spec["probe_sentences"]), n)
    probe = torch.sort(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:probe_size]).values
    history: list[dict[str, float]] = []
    metrics: dict[str, float] = {}
    step = 0
    with _deterministic(int(spec["threads"])):
        bar = progress_bar(total=int(spec["max_steps"]), desc="tiny model", disable=not progress, leave=False)
        while step < int(spec["max_steps"]):
            if cursor + bf > n:
                perm, cursor = torch.randperm(n, generator=gen), 0
            index = perm[cursor : cursor + bf]
            cursor += bf
            width = int(data.lengths[index].max())
            ids, tgt = data.inputs[index, :width], data.lm_targets[index, :width]
            is_tail = data.tail_targets[index, :width] != IGNORE
            weight = torch.where(is_tail, tail_w, prompt_w) * (tgt != IGNORE)
            sel = weight > 0
            # Output logits only where a token is scored: with prompt_weight 0 only at the tail.
            hidden = model.transformer(input_ids=ids).last_hidden_state[sel]
            ce = F.cross_entropy(model.lm_head(hidden), tgt[sel], reduction="none")
            loss = (ce * weight[sel]).sum() / weight[sel].sum()
            fact_loss = float(loss.detach())
            if text_w:
                rows = torch.randint(len(blocks), (int(spec["batch_text"]),), generator=gen)
                chunk = blocks[rows]
                logits = model(input_ids=chunk[:, :-1]).logits
                text_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1))
                loss = loss + text_w * text_loss
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            sched.step()
            step += 1
            bar.update(1)
            last = step == int(spec["max_steps"])
            if step % int(spec["eval_every"]) == 0 or last:
                # A fixed sample of sentences decides when to look at all of them (cheaper).
                probe_acc = probe_accuracy(model, data, probe, int(spec["eval_batch_size"]))
                entry = {"step": step, "fact_loss": fact_loss, "probe_accuracy_filtered": probe_acc}
                if probe_acc >= target or last:
                    metrics = tail_accuracy(model, data, sentences, int(spec["eval_batch_size"]))
                    entry.update(metrics)
                history.append(entry)
                bar.set_postfix(acc=f"{probe_acc:.3f}", loss=f"{fact_loss:.3f}")
                log.info(
                    "step %d: fact loss %.3f, filtered tail accuracy %.3f on %d sentences%s",
                    step,
                    fact_loss,
                    probe_acc,
                    len(probe),
                    f"; on all {len(data)}: {metrics['tail_accuracy_filtered']:.3f}"
                    if "tail_accuracy" in entry
                    else "",
                )
                if metrics.get("tail_accuracy_filtered", 0.0) >= target:
                    break
        bar.close()
    model.eval()
    model.requires_grad_(False)
    reached = bool(metrics.get("tail_accuracy_filtered", 0.0) >= target)
    if not reached:
        log.warning(
            "tiny model: stopped at max_steps %d with filtered tail accuracy %.3f < target %.3f",
            step,
            metrics.get("tail_accuracy_filtered", float("nan")),
            target,
        )
    stats = {
        **metrics,
        "target_accuracy": target,
        "reached_target": reached,
        "steps": step,
        "facts": int(sentences["uuid"].nunique()),
        "sentences": len(data),
        "text_blocks": int(len(blocks)),
        "vocab_size": len(tokenizer),
        "train_seconds": round(time.perf_counter() - started, 2),
        "threads": int(spec["threads"]),
        "history": history,
        "spec": spec,
    }
    return model, tokenizer, stats


def prepare(
    spec: dict,
    out_dir: str | Path,
    *,
    facts: pd.DataFrame,
    text: str | None,
    seed: int = 0,
    verbalizer: Verbalizer | None = None,
) -> dict[str, Any]:
    """Train the tiny model and save it (safetensors + tokenizer) into `out_dir`; return its stats."""
    model, tokenizer, stats = train(facts, text, spec, seed, verbalizer=verbalizer)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return stats
