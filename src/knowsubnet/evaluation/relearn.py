"""Relearning: a short finetune of a (possibly ablated) model, to see how much removed knowledge
comes back. The unlearning literature's test of suppression against removal: knowledge that was
only hidden returns after a few steps, often even from unrelated data (RMU on WMDP; Deeb & Roger
2024; Lynch et al. 2024).

What trains (`scope`): `masked`, the weights of the masked layers (the top blocks' linear layers the
mask chose from), with embeddings, norms and the lower blocks frozen, so the hidden states entering
the first masked block are computed once (`scoring.cached.CachedFacts`) and every step runs the top blocks only;
or `whole`, every parameter of the model (the stronger attack, a full forward per step). Adam on
the tail cross-entropy of fact sentences (or every next token of a text row), seeded batches, eval
mode (no dropout), so a CPU run is bit-identical for a seed.
`hold_zero`: the removed weights get no gradient and stay exactly zero (the remaining model as a
deployed artefact); otherwise they start at zero and train like the rest.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from knowsubnet.data.encoding import IGNORE, FactSet, row_lengths
from knowsubnet.method import masking
from knowsubnet.models import precision
from knowsubnet.scoring.cached import CachedFacts

# A recovered fraction needs something to recover: below x2 it is reported as undefined.
MIN_REMOVAL_LOG_RATIO = math.log(2.0)


SCOPES = ("masked", "whole")


def text_rows(blocks: torch.Tensor, tokens: int) -> FactSet:
    """ControlLM blocks [B, L] cut into rows of `tokens` tokens, every next token a target: unrelated
    text to finetune on, in the same shape as facts."""
    ids = blocks[:, : blocks.shape[1] // tokens * tokens].reshape(-1, tokens)
    return FactSet(ids[:, :-1].contiguous(), ids[:, 1:].contiguous(), [f"text row {i}" for i in range(len(ids))])


def _full_tail_ce(model: torch.nn.Module, facts: FactSet, index: torch.Tensor, autocast) -> torch.Tensor:
    """Tail cross-entropy of the facts `index` through the whole model (right padding needs no
    attention mask: a causal model never attends to the pad after a row's last position)."""
    width = int(row_lengths(facts.targets[index]).max())
    device = next(model.parameters()).device
    ids, targets = facts.input_ids[index, :width].to(device), facts.targets[index, :width].to(device)
    with autocast:
        hidden = model(input_ids=ids).logits
    where = targets != IGNORE
    return F.cross_entropy(hidden[where].float(), targets[where], reduction="none")


@contextlib.contextmanager
def finetuned(
    layers: list[masking.MaskableLayer],
    facts: CachedFacts | FactSet,
    *,
    removed: dict[str, torch.Tensor] | None,
    granularity: str,
    hold_zero: bool,
    steps: int,
    lr: float,
    batch: int,
    seed: int,
    scope: str = "masked",
    model: torch.nn.Module | None = None,
    compute_dtype: torch.dtype = torch.float32,
) -> Iterator[list[float]]:
    """The model of `layers` with `removed` zeroed (None: nothing removed) and then finetuned on
    `facts` for `steps` Adam steps, for the duration of the block (yields the loss per step); every
    weight it trained is restored on exit.

    scope `masked`: `facts` is a CachedFacts and only the masked layers' weights train (its compute
    dtype is the step's); `whole`: `facts` is a FactSet and every parameter of `model` trains, in
    `compute_dtype` under autocast."""
    zero = (
        {
            layer.name: masking.expand_to_weight(
                removed[layer.name].to(layer.weight.device, torch.bool), layer, granularity
            )
            for layer in layers
        }
        if removed is not None
        else None
    )
    if scope == "masked":
        model, dtype = facts.top.model, facts.top.compute_dtype
        weights = [layer.weight for layer in layers]
    else:
        if model is None or scope != "whole":
            raise ValueError(f"relearning scope {scope!r}: expected masked, or whole with the model")
        dtype = compute_dtype
        weights = list(model.parameters())
    saved = [(w, w.detach().clone(), w.requires_grad) for w in weights]
    was_training = model.training
    losses: list[float] = []
    autocast = (
        torch.autocast(next(model.parameters()).device.type, dtype=dtype)
        if dtype != torch.float32
        else contextlib.nullcontext()
    )
    try:
        with torch.no_grad():
            for layer in layers:
                if zero is not None:
                    layer.weight.masked_fill_(zero[layer.name], 0.0)
        for weight in weights:
            weight.requires_grad_(True)
        # masked in bf16: the fp32 weights train and each step's forward sees them cast
        # (TopBlocks.forward); TopBlocks' own bf16 copies are a snapshot from before the finetuning
        bf16 = scope == "masked" and dtype != torch.float32
        optimizer = precision.adam(weights, lr, dtype)
        generator = torch.Generator().manual_seed(int(seed))
        order = torch.randperm(len(facts), generator=generator)
        position = 0
        model.eval()
        for _ in range(steps):
            if position + min(batch, len(facts)) > len(order):  # a new epoch: a new order
                order, position = torch.randperm(len(facts), generator=generator), 0
            index = order[position : position + batch]
            position += len(index)
            if scope == "masked":
                loss = facts.tail_ce(index, {layer.name: layer.weight for layer in layers} if bf16 else None).mean()
            else:
                loss = _full_tail_ce(model, facts, index, autocast).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if hold_zero and zero is not None:
                for layer in layers:
                    layer.weight.grad.masked_fill_(zero[layer.name], 0.0)
            optimizer.step()
            if hold_zero and zero is not None:
                with torch.no_grad():
                    for layer in layers:
                        layer.weight.masked_fill_(zero[layer.name], 0.0)
            losses.append(float(loss.detach()))
        yield losses
    finally:
        model.train(was_training)
        with torch.no_grad():
            for weight, original, requires_grad in saved:
                weight.requires_grad_(requires_grad)
                weight.grad = None
                weight.copy_(original)


def recovered_fraction(gap_before: float, gap_after: float) -> float | None:
    """1 - gap_after / gap_before, a gap being log PPL(remaining) - log PPL(original) on the same
    facts, before and after both models were finetuned the same way (Deeb & Roger 2024): 0 = the
    removal's gap is untouched, 1 = closed. None (undefined) when the removal was under x2.

    Not against the original before finetuning: finetuning also lowers the original's PPL (by 2-2.6x
    on the demo's facts), and measured against the unfinetuned original that learning would read as
    more than full recovery."""
    if not gap_before >= MIN_REMOVAL_LOG_RATIO:
        return None
    return 1.0 - gap_after / gap_before
