"""Relearning: a short finetune of a (possibly ablated) model, to see how much removed knowledge
comes back. The unlearning literature's test of suppression against removal: knowledge that was
only hidden returns after a few steps, often even from unrelated data (RMU on WMDP; Deeb & Roger
2024; Lynch et al. 2024).

What trains: the weights of the masked layers (the top blocks' linear layers the mask chose from);
embeddings, norms and the lower blocks stay frozen. Adam on the tail cross-entropy of fact
sentences, seeded batches, eval mode (no dropout), so a CPU run is bit-identical for a seed.
`hold_zero`: the removed weights get no gradient and stay exactly zero (the remaining model as a
deployed artefact); otherwise they start at zero and train like the rest.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F

from knowsubnet.data.encoding import FactSet
from knowsubnet.evaluation.scoring import tail_logits
from knowsubnet.method import masking

# A recovered fraction needs something to recover: below x2 it is reported as undefined.
MIN_REMOVAL_LOG_RATIO = math.log(2.0)


@contextlib.contextmanager
def finetuned(model: torch.nn.Module, layers: list[masking.MaskableLayer], facts: FactSet, *,
              removed: dict[str, torch.Tensor] | None, granularity: str, hold_zero: bool, steps: int,
              lr: float, batch: int, seed: int, device: str | torch.device) -> Iterator[list[float]]:
    """The model with `removed` zeroed (None: nothing removed) and then finetuned on `facts` for
    `steps` Adam steps, for the duration of the block (yields the loss per step); the masked
    layers' weights are restored on exit."""
    saved = [(layer, layer.weight.detach().clone()) for layer in layers]
    zero = ({layer.name: masking.expand_to_weight(removed[layer.name].to(layer.weight.device, torch.bool),
                                                 layer, granularity) for layer in layers}
            if removed is not None else None)
    weights = [layer.weight for layer in layers]
    losses: list[float] = []
    try:
        with torch.no_grad():
            for layer in layers:
                if zero is not None:
                    layer.weight.masked_fill_(zero[layer.name], 0.0)
        for weight in weights:
            weight.requires_grad_(True)
        optimizer = torch.optim.Adam(weights, lr=lr)
        generator = torch.Generator().manual_seed(int(seed))
        order = torch.randperm(len(facts), generator=generator)
        position = 0
        was_training = model.training
        model.eval()
        for _ in range(steps):
            if position + min(batch, len(facts)) > len(order):  # a new epoch: a new order
                order, position = torch.randperm(len(facts), generator=generator), 0
            index = order[position:position + batch]
            position += len(index)
            part = facts.subset(index)
            logits, _, gold = tail_logits(model, part.input_ids.to(device), part.targets.to(device))
            loss = F.cross_entropy(logits, gold)
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
        model.train(was_training)
        yield losses
    finally:
        with torch.no_grad():
            for layer, original in saved:
                layer.weight.requires_grad_(False)
                layer.weight.grad = None
                layer.weight.copy_(original)


def recovered_fraction(nll_original: float, nll_removed: float, nll_after: float) -> float | None:
    """(log PPL_removed - log PPL_after) / (log PPL_removed - log PPL_original): 0 = nothing came
    back, 1 = all of it. None (undefined) when the removal itself was under x2."""
    gap = nll_removed - nll_original
    if not gap >= MIN_REMOVAL_LOG_RATIO:
        return None
    return (nll_removed - nll_after) / gap
