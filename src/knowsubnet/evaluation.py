"""Tail-token metrics (PPL, rank, accuracy), ControlLM perplexity, and the ablation evaluation.

The ablation compares four versions of one model on TargetKG, ControlKG and ControlLM test data:

- original: the pretrained model;
- removed:  the subnetwork zeroed (the *remaining model*, `keep="remaining"`);
- random:   a random subnetwork with exactly the same number of entries per masked matrix zeroed,
            over several seeded draws (the baseline: removing that many weights at random);
- kept:     only the subnetwork kept in the masked layers (`keep="subnetwork"`).

ΔPPL = PPL(variant) − PPL(original). Every forward pass runs without gradients in eval mode; the
model's weights are restored after each variant (`masking.masked_weights`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn
from knowsubnet.progress import progress_bar

from knowsubnet import masking
from knowsubnet.errors import InputError

log = logging.getLogger(__name__)

SETS = ("targetkg", "controlkg", "controllm")
VARIANTS = ("removed", "random", "kept")
IGNORE = -100

# Defaults of the `eval` params section (used when a key is absent).
EVAL_DEFAULTS = {"random_draws": 3, "batch_size": 32, "device": "auto", "dtype": "float32",
                 "controllm_ppl": "token_mean"}
# ControlLM perplexity: exp(mean CE over every token) (default: one number for the whole text,
# independent of batching), or the paper's mean over batches of exp(mean CE of the batch).
CONTROLLM_PPL = ("token_mean", "batch_mean")


# ----------------------------------------------------------------------------------------------
# settings


def eval_settings(params: dict[str, Any]) -> dict[str, Any]:
    """The `eval` params section with defaults filled in and values checked."""
    section = params.get("eval") or {}
    settings = {**EVAL_DEFAULTS, **section}
    for key in ("random_draws", "batch_size"):
        value = settings[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"params key 'eval.{key}' = {value!r}: expected an integer >= 1")
    if settings["device"] not in ("auto", "cpu", "mps") and not str(settings["device"]).startswith("cuda"):
        raise InputError(f"params key 'eval.device' = {settings['device']!r}: expected auto, cpu, cuda, cuda:N or mps")
    if settings["controllm_ppl"] not in CONTROLLM_PPL:
        raise InputError(f"params key 'eval.controllm_ppl' = {settings['controllm_ppl']!r}: expected one of "
                         f"{', '.join(CONTROLLM_PPL)}")
    if settings["dtype"] not in DTYPES:
        raise InputError(f"params key 'eval.dtype' = {settings['dtype']!r}: expected one of {', '.join(DTYPES)}")
    return settings


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    # Dropout must be off for deterministic scores; restore the caller's mode afterwards.
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _exp(x: float) -> float:
    # exp of a mean CE; a wrecked model (e.g. "kept") can overflow, which is +inf, not an error.
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


# ----------------------------------------------------------------------------------------------
# per-fact scores


def _hidden_states(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    # The final hidden state (after the last norm); the LM head is applied only where needed.
    return model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state


def tail_logits(model: nn.Module, input_ids: torch.Tensor,
                targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at the positions that predict a tail token only.

    Returns (logits [P, V] float32, row index [P] of each position, gold token id [P]); positions
    are in row-major order, so each fact's first tail position comes first among its own.
    """
    where = targets != IGNORE
    # Causal LM: the columns after the last tail position cannot change earlier logits; skip them.
    last = int(where.any(dim=0).nonzero().max()) + 1 if where.any() else 0
    hidden = _hidden_states(model, input_ids[:, :last])
    where = where[:, :last]
    rows = where.nonzero()[:, 0]
    logits = model.get_output_embeddings()(hidden[where]).float()
    return logits, rows, targets[:, :last][where]


def token_ranks(logits: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Rank of the gold token per row of logits: 1 + number of tokens with a strictly higher logit.

    Ties count in the gold token's favour (a tie for first place is rank 1).
    """
    gold_logit = logits.gather(1, gold[:, None])
    return 1 + (logits > gold_logit).sum(dim=1)


def fact_scores_from_logits(logits: torch.Tensor, rows: torch.Tensor, gold: torch.Tensor,
                            n_facts: int) -> dict[str, torch.Tensor]:
    """Per-fact nll / rank / correct from the tail-position logits of `n_facts` facts.

    nll: mean CE over the fact's tail tokens (float64); rank: rank of its FIRST tail token;
    correct: every tail token is top-1 under teacher forcing.
    """
    counts = torch.bincount(rows, minlength=n_facts)
    if bool((counts == 0).any()):
        raise ValueError(f"fact {int((counts == 0).nonzero()[0])} of the batch has no tail token")
    ce = torch.nn.functional.cross_entropy(logits, gold, reduction="none").double()
    nll = torch.zeros(n_facts, dtype=torch.float64, device=ce.device).index_add_(0, rows, ce) / counts
    ranks = token_ranks(logits, gold)
    first = torch.ones_like(rows, dtype=torch.bool)
    first[1:] = rows[1:] != rows[:-1]
    wrong = torch.zeros(n_facts, dtype=torch.long, device=rows.device).index_add_(0, rows, (ranks != 1).long())
    return {"nll": nll.cpu(), "rank": ranks[first].cpu(), "correct": (wrong == 0).cpu()}


@torch.no_grad()
def score_facts(model: nn.Module, factset, batch_size: int, device: str | torch.device,
                desc: str = "facts") -> dict[str, torch.Tensor]:
    """Per-fact `nll` [N] float64, `rank` [N] long (first tail token, 1 = best), `correct` [N] bool."""
    n = factset.input_ids.shape[0]
    if n == 0:
        raise InputError(f"{desc}: no facts to score")
    empty = (factset.targets != IGNORE).sum(dim=1) == 0
    if bool(empty.any()):
        raise InputError(f"{desc}: fact {factset.uuids[int(empty.nonzero()[0])]} has no tail token to score")
    parts: list[dict[str, torch.Tensor]] = []
    with _eval_mode(model):
        for start in progress_bar(range(0, n, batch_size), desc=desc, leave=False):
            ids = factset.input_ids[start:start + batch_size].to(device)
            tg = factset.targets[start:start + batch_size].to(device)
            logits, rows, gold = tail_logits(model, ids, tg)
            parts.append(fact_scores_from_logits(logits, rows, gold, ids.shape[0]))
    return {key: torch.cat([p[key] for p in parts]) for key in ("nll", "rank", "correct")}


def summarize_facts(scores: dict[str, torch.Tensor]) -> dict[str, float]:
    """Set-level metrics: PPL = exp(mean over facts of the fact's mean CE), mean/median rank, accuracy."""
    nll = scores["nll"].double()
    ranks = scores["rank"].double()
    return {
        "ppl": _exp(float(nll.mean())),
        "rank": float(ranks.mean()),
        "acc": float(scores["correct"].double().mean()),
        "rank_median": float(np.median(ranks.numpy())),
        "nll": float(nll.mean()),
        "n": int(nll.numel()),
    }


@torch.no_grad()
def lm_nll(model: nn.Module, blocks: torch.Tensor, batch_size: int, device: str | torch.device,
           desc: str = "controllm") -> tuple[float, int]:
    """Sum of next-token CE over every position of the blocks, and the number of tokens scored."""
    if blocks.dim() != 2 or blocks.shape[0] == 0 or blocks.shape[1] < 2:
        raise InputError(f"{desc}: expected ControlLM blocks [n >= 1, block_size >= 2], got {tuple(blocks.shape)}")
    head = model.get_output_embeddings()
    total, count = 0.0, 0
    with _eval_mode(model):
        for start in progress_bar(range(0, blocks.shape[0], batch_size), desc=desc, leave=False):
            ids = blocks[start:start + batch_size].to(device)
            hidden = _hidden_states(model, ids[:, :-1])
            # One block at a time through the LM head: [T, V] logits, not [B, T, V].
            for row in range(ids.shape[0]):
                logits = head(hidden[row]).float()
                ce = torch.nn.functional.cross_entropy(logits, ids[row, 1:], reduction="sum")
                total += float(ce.double())
                count += ids.shape[1] - 1
    return total, count


def lm_ppl(model: nn.Module, blocks: torch.Tensor, batch_size: int, device: str | torch.device,
           averaging: str = "token_mean") -> float:
    """ControlLM perplexity of the blocks. `token_mean`: exp(mean next-token CE over every token);
    `batch_mean` (the paper's): the mean over batches of `batch_size` blocks of exp(batch mean CE)."""
    if averaging == "token_mean":
        total, count = lm_nll(model, blocks, batch_size, device)
        return _exp(total / count)
    if averaging != "batch_mean":
        raise InputError(f"params key 'eval.controllm_ppl' = {averaging!r}: expected one of {', '.join(CONTROLLM_PPL)}")
    ppls = []
    for start in range(0, blocks.shape[0], batch_size):
        total, count = lm_nll(model, blocks[start:start + batch_size], batch_size, device)
        ppls.append(_exp(total / count))
    return float(np.mean(ppls))


# ----------------------------------------------------------------------------------------------
# ablation


def _evaluate_sets(model, targetkg, controlkg, blocks, batch_size, device, controllm_ppl: str, label: str,
                   controlkg_relations: list[str] | None = None) -> dict[str, dict]:
    log.info("evaluating %s model", label)
    control = score_facts(model, controlkg, batch_size, device, f"{label}/controlkg")
    out = {
        "targetkg": _fact_metrics(summarize_facts(score_facts(model, targetkg, batch_size, device, f"{label}/targetkg"))),
        "controlkg": _fact_metrics(summarize_facts(control)),
        "controllm": {"ppl": lm_ppl(model, blocks, batch_size, device, controllm_ppl)},
    }
    if controlkg_relations is not None:
        # Where collateral damage lands: ControlKG PPL per relation.
        nll = pd.Series(control["nll"].numpy(), index=controlkg_relations)
        out["controlkg_by_relation"] = {rel: _exp(float(v)) for rel, v in nll.groupby(level=0).mean().items()}
    return out


def _fact_metrics(summary: dict[str, float]) -> dict[str, float]:
    return {key: summary[key] for key in ("ppl", "rank", "acc", "rank_median")}


def _mean_and_spread(draws: list[dict[str, dict[str, float]]]) -> tuple[dict, dict]:
    """Per metric: mean over draws, and sample standard deviation (0 for a single draw)."""
    mean: dict[str, dict[str, float]] = {}
    spread: dict[str, dict[str, float]] = {}
    for set_name, metrics in draws[0].items():
        mean[set_name], spread[set_name] = {}, {}
        for metric in metrics:
            values = np.array([d[set_name][metric] for d in draws], dtype=np.float64)
            mean[set_name][metric] = float(values.mean())
            spread[set_name][metric] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return mean, spread


def evaluate_ablation(model: nn.Module, layers: list[masking.MaskableLayer], logits: dict[str, torch.Tensor],
                      granularity: str, targetkg, controlkg, controllm_blocks: torch.Tensor,
                      random_draws: int, seed: int, batch_size: int, device: str | torch.device, *,
                      model_name: str | None = None, target: str | None = None,
                      controlkg_relations: list[str] | None = None,
                      controllm_ppl: str = "token_mean") -> dict[str, Any]:
    """Original / removed / random-removed / kept metrics on the three test sets (see module doc).

    `logits` are mask logits (subnetwork = logits > 0) or boolean masks. The random baseline draws
    `random_draws` masks from `torch.Generator().manual_seed(seed)`: deterministic for a fixed seed.
    `controllm_ppl`: how ControlLM perplexity averages (`lm_ppl`).
    """
    if random_draws < 1:
        raise InputError(f"params key 'eval.random_draws' = {random_draws}: expected at least 1 draw")
    masks = {name: (v if v.dtype == torch.bool else v > 0).cpu() for name, v in logits.items()}
    masking.check_mask_matches(layers, masks, granularity, source="evaluate_ablation")
    args = (targetkg, controlkg, controllm_blocks, batch_size, device, controllm_ppl)  # same averaging everywhere
    by_rel = {"controlkg_relations": controlkg_relations}

    original = _evaluate_sets(model, *args, label="original", **by_rel)
    with masking.masked_weights(layers, masks, granularity, keep="remaining"):
        removed = _evaluate_sets(model, *args, label="removed", **by_rel)
    with masking.masked_weights(layers, masks, granularity, keep="subnetwork"):
        kept = _evaluate_sets(model, *args, label="kept")

    generator = torch.Generator().manual_seed(int(seed))
    draws = []
    for draw in range(random_draws):
        random_masks = masking.random_masks_like(masks, generator)
        with masking.masked_weights(layers, random_masks, granularity, keep="remaining"):
            draws.append(_evaluate_sets(model, *args, label=f"random[{draw}]", **by_rel))
    random_mean, random_spread = _mean_and_spread(draws)

    variants = {"removed": removed, "random": random_mean, "kept": kept}
    delta = {name: {s: result[s]["ppl"] - original[s]["ppl"] for s in SETS} for name, result in variants.items()}
    return {
        "model": model_name,
        "target": target,
        "seed": int(seed),
        "granularity": granularity,
        "sparsity": masking.sparsity(model, layers, masks, granularity),
        "subnetwork_size": masking.subnetwork_size(layers, masks, granularity),
        "counts": {"targetkg": int(targetkg.input_ids.shape[0]), "controlkg": int(controlkg.input_ids.shape[0]),
                   "controllm_blocks": int(controllm_blocks.shape[0]),
                   **({"controlkg_by_relation": pd.Series(controlkg_relations).value_counts().sort_index().to_dict()}
                      if controlkg_relations is not None else {})},
        "original": original,
        "removed": removed,
        "random": random_mean,
        "kept": kept,
        "random_spread": random_spread,
        "random_draws": draws,
        "random_seed": int(seed),
        "controllm_ppl": controllm_ppl,
        "delta_ppl": delta,
        "delta_ppl_random_draws": [{s: d[s]["ppl"] - original[s]["ppl"] for s in SETS} for d in draws],
    }


# ----------------------------------------------------------------------------------------------
# inputs of the evaluate / combine scripts


def mask_layers(model: nn.Module, logits: dict[str, torch.Tensor], metadata: dict[str, str],
                params: dict[str, Any], source: str) -> tuple[list[masking.MaskableLayer], str]:
    """The model's maskable layers for a mask file, checked to fit it; and its granularity.

    top_k comes from the mask's metadata (`top_k_blocks` or `top_k`), else params `mask.top_k_blocks`.
    """
    granularity = metadata.get("granularity")
    if granularity not in masking.GRANULARITIES:
        raise InputError(f"{source}: metadata 'granularity' must be one of {', '.join(masking.GRANULARITIES)}")
    top_k = metadata.get("top_k_blocks", metadata.get("top_k"))
    if top_k is None:
        top_k = (params.get("mask") or {}).get("top_k_blocks")
        if top_k is None:
            raise InputError(f"{source}: metadata has no 'top_k_blocks' and params key 'mask.top_k_blocks' is not set")
    try:
        top_k = int(top_k)
    except ValueError:
        raise InputError(f"{source}: metadata 'top_k_blocks' = {top_k!r}: expected an integer") from None
    layers = masking.find_maskable_layers(model, top_k)
    masking.check_mask_matches(layers, logits, granularity, source=str(source))
    return layers, granularity


def load_test_sets(tokenizer, verbalized: str | Path, splits_dir: str | Path, controllm_dir: str | Path,
                   known: dict | None = None,
                   scored_positions: str = "all_tail_tokens") -> tuple[Any, Any, torch.Tensor]:
    """TargetKG test and ControlKG test FactSets (facts the model knows, see
    `factsets.load_split_factset`), and the ControlLM test blocks."""
    from knowsubnet import encoding, factsets  # the data layer; imported here to keep this module light

    verbalized_frame = factsets.read_verbalized(verbalized)
    splits_dir = Path(splits_dir)
    sets = []
    for kind in ("targetkg", "controlkg"):
        path = splits_dir / f"{kind}_test.parquet"
        if not path.exists():
            raise InputError(f"{path}: split file not found; expected the output of split_controls")
        sets.append(factsets.load_split_factset(path, verbalized_frame, tokenizer, known, scored_positions))
    blocks_path = Path(controllm_dir) / "test.safetensors"
    if not blocks_path.exists():
        raise InputError(f"{blocks_path}: ControlLM test blocks not found; expected the output of prepare_controllm")
    return sets[0], sets[1], encoding.load_blocks(blocks_path)


def headline(result: dict) -> dict:
    """The few numbers that summarise an ablation (`dvc metrics show`): sparsity, ΔPPL of the removed
    and random-removed models on TargetKG / ControlKG / ControlLM, TargetKG accuracy before and after."""
    out = {"sparsity": round(float(result["sparsity"]["masked_layers"]), 6)}
    for variant in ("removed", "random"):
        for name, value in result["delta_ppl"][variant].items():
            out[f"dppl_{variant}_{name}"] = round(float(value), 4)
    for variant in ("original", "removed"):
        acc = result.get(variant, {}).get("targetkg", {}).get("acc")
        if acc is not None:
            out[f"targetkg_acc_{variant}"] = round(float(acc), 4)
    return out
