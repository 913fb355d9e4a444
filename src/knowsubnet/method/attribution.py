"""Removals that need no training, sized by the learned mask: which weights or neurons to zero.

- `magnitude_matched`: random weights drawn from the same magnitudes as the mask's, per matrix
  (a stronger null than uniform random: a learned mask may prefer large weights);
- `taylor_terms`, `attribution_scores` + `top_counts`: pruning by attribution, w x dL/dw of the
  TargetKG tail loss (first-order Taylor importance, as in Molchanov et al. 2019 and SNIP) minus
  `contrast` x the same on ControlKG, at exactly the mask's per-matrix counts;
- `neuron_scores` + `neuron_masks`: knowledge neurons (Dai et al. 2022), integrated gradients of
  each MLP neuron's activation for the facts' tails (optionally minus `control_neuron_scores`),
  then ablation of the top neurons.

Gradients run through a `MaskTrainer`'s caches: the blocks below the masked ones run once per fact.
Every function returns weight-shaped boolean masks (True = removed) over the trainer's layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from knowsubnet.core.errors import InputError
from knowsubnet.data.encoding import IGNORE
from knowsubnet.method import masking, objectives
from knowsubnet.method.training import MaskTrainer

# The MLP's output projection, whose input features are the MLP neurons (GPT-2, Llama / SmolLM2,
# GPT-J, GPT-NeoX, OPT).
DOWN_PROJECTIONS = ("mlp.c_proj", "mlp.down_proj", "mlp.fc_out", "mlp.dense_4h_to_h", ".fc2")


def scaled_counts(counts: dict[str, int], factor: float, sizes: dict[str, int]) -> dict[str, int]:
    """`factor` x each count, rounded, at most the matrix's size."""
    return {name: min(int(round(factor * count)), sizes[name]) for name, count in counts.items()}


# ----------------------------------------------------------------------------------------------
# magnitude-matched random


def magnitude_matched(
    layers: list[masking.MaskableLayer],
    masks: dict[str, torch.Tensor],
    bins: int,
    generator: torch.Generator,
    factor: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Per matrix, the weights sorted by magnitude in `bins` equal-size bins; in each bin as many
    weights drawn at random as the mask has there (x `factor`, at most the bin)."""
    out = {}
    for layer in sorted(layers, key=lambda maskable: maskable.name):
        magnitude = layer.weight.detach().abs().flatten().cpu()
        order = torch.argsort(magnitude, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel())
        bin_of = rank * bins // order.numel()
        wanted = torch.bincount(bin_of[masks[layer.name].flatten()], minlength=bins)
        chosen = torch.zeros(order.numel(), dtype=torch.bool)
        for b in range(bins):
            members = order[b * order.numel() // bins : (b + 1) * order.numel() // bins]  # = bin_of == b
            take = min(int(round(factor * int(wanted[b]))), members.numel())
            chosen[members[torch.randperm(members.numel(), generator=generator)[:take]]] = True
        out[layer.name] = chosen.view(layer.weight.shape)
    return out


# ----------------------------------------------------------------------------------------------
# attribution pruning


def _weight_gradients(trainer: MaskTrainer, side: str, n: int, batch: int) -> dict[str, torch.Tensor]:
    """d(mean tail-token cross-entropy over all `side` facts)/dW for the masked layers."""
    weights = {layer.name: layer.weight.detach().clone().requires_grad_(True) for layer in trainer.layers}
    targets_all = trainer.t_targets if side == "target" else trainer.c_targets
    total_tokens = int((targets_all != IGNORE).sum())
    for start in range(0, n, batch):
        idx = torch.arange(start, min(start + batch, n))
        (logits,) = trainer._kg_tail_logits(weights, [(side, idx)])
        targets = targets_all[idx.to(trainer.device)]
        loss = F.cross_entropy(logits.float(), targets[targets != IGNORE], reduction="sum") / total_tokens
        loss.backward()
    return {name: w.grad.detach() for name, w in weights.items()}


def taylor_terms(trainer: MaskTrainer, side: str, batch: int) -> dict[str, torch.Tensor]:
    """-w x dL/dw per weight (CPU): the first-order change of the `side` facts' mean tail loss when
    the weight is zeroed."""
    n = trainer.n_target if side == "target" else trainer.n_control
    grads = _weight_gradients(trainer, side, n, batch)
    return {layer.name: (-layer.weight.detach() * grads[layer.name]).cpu() for layer in trainer.layers}


def attribution_scores(
    target: dict[str, torch.Tensor], control: dict[str, torch.Tensor] | None, contrast: float, signed: bool
) -> dict[str, torch.Tensor]:
    """Per weight, how much zeroing it costs the target (`taylor_terms` of TargetKG: signed, the
    predicted rise of its loss; else its magnitude, the classic |w x grad|) minus `contrast` x the
    magnitude of the same on ControlKG."""
    scores = {}
    for name, term in target.items():
        score = term.clone() if signed else term.abs()
        if control is not None and contrast > 0:
            score -= contrast * control[name].abs()
        scores[name] = score
    return scores


def top_counts(scores: dict[str, torch.Tensor], counts: dict[str, int]) -> dict[str, torch.Tensor]:
    """Per matrix, exactly `counts[name]` highest-scoring entries (ties: the lower index first)."""
    out = {}
    for name, score in scores.items():
        flat = score.flatten()
        chosen = torch.zeros(flat.numel(), dtype=torch.bool)
        # argsort is stable: equal scores keep index order, so the choice is deterministic
        chosen[torch.argsort(-flat, stable=True)[: counts[name]]] = True
        out[name] = chosen.view(score.shape)
    return out


# ----------------------------------------------------------------------------------------------
# knowledge neurons


def down_projections(layers: list[masking.MaskableLayer]) -> list[masking.MaskableLayer]:
    found = [layer for layer in layers if layer.name.endswith(DOWN_PROJECTIONS)]
    if not found:
        raise InputError(
            f"no MLP output projection among the masked layers ({layers[0].name}, ...): expected a "
            f"name ending in one of {', '.join(DOWN_PROJECTIONS)}"
        )
    return found


def neuron_scores(
    trainer: MaskTrainer, ig_steps: int, batch: int, side: str = "target", facts: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Per MLP output projection, one score per neuron (its input feature): the integrated gradient
    of the fact's tail log-probability with respect to the neuron's activation at the tail positions
    (Dai et al. 2022: the activation scaled from 0 to its value, one layer at a time, `ig_steps`
    Riemann steps), divided by the fact's largest attribution, clipped at 0 and summed over the
    `side` training facts (`facts`: their indices; default all): how consistently a neuron
    expresses those facts."""
    hidden_all, targets_all, lengths = (
        (trainer.t_hidden, trainer.t_targets, trainer.t_len)
        if side == "target"
        else (trainer.c_hidden, trainer.c_targets, trainer.c_len)
    )
    facts = torch.arange(targets_all.shape[0]) if facts is None else facts
    per_layer = {}
    for layer in down_projections(trainer.layers):
        per_fact = []
        for start in range(0, len(facts), batch):
            idx = facts[start : start + batch]
            width = int(lengths[idx].max())
            hidden, targets = hidden_all[idx.to(trainer.device), :width], targets_all[idx.to(trainer.device), :width]
            tails = (targets != IGNORE).to(hidden.dtype)[:, :, None]
            total = None
            for step in range(1, ig_steps + 1):
                captured = {}

                def scale(module, args, alpha=step / ig_steps, captured=captured):
                    captured["x"] = args[0].detach()
                    captured["z"] = (args[0].detach() * alpha).requires_grad_(True)
                    return (captured["z"], *args[1:])

                handle = layer.module.register_forward_pre_hook(scale)
                try:
                    final = trainer.top.forward(hidden)
                finally:
                    handle.remove()
                rows, cols = objectives.tail_positions(targets)
                logprob = -F.cross_entropy(
                    trainer.top.logits(final[rows, cols]).float(), targets[rows, cols], reduction="sum"
                )
                (grad,) = torch.autograd.grad(logprob, captured["z"])
                total = grad if total is None else total + grad
            # Riemann sum x activation, over the fact's tail positions
            per_fact.append((captured["x"] * total / ig_steps * tails).sum(dim=1).cpu())
        per_layer[layer.name] = torch.cat(per_fact)  # [facts, neurons]
    # each fact's attributions relative to its largest one (over every layer), as Dai et al. threshold them
    largest = torch.stack([a.max(dim=1).values for a in per_layer.values()]).max(dim=0).values.clamp_min(1e-12)
    return {name: (a / largest[:, None]).clamp_min(0).sum(dim=0) for name, a in per_layer.items()}


def control_neuron_scores(
    trainer: MaskTrainer, ig_steps: int, batch: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """`neuron_scores` of as many ControlKG facts as there are TargetKG facts (a seeded sample): what
    a neuron expresses of everything, subtracted x a contrast to keep the target's own neurons."""
    sample = torch.randperm(trainer.n_control, generator=generator)[: trainer.n_target].sort().values
    return neuron_scores(trainer, ig_steps, batch, side="control", facts=sample)


def neuron_count(masks: dict[str, torch.Tensor], layers: list[masking.MaskableLayer], factor: float = 1.0) -> int:
    """Neurons that remove as many weights as the mask (x `factor`): its size / the MLP's output width."""
    width = down_projections(layers)[0].out_features
    return int(round(factor * sum(int(m.sum()) for m in masks.values()) / width))


def neuron_masks(
    layers: list[masking.MaskableLayer], scores: dict[str, torch.Tensor], n: int
) -> dict[str, torch.Tensor]:
    """Weight masks zeroing the `n` highest-scoring neurons over all layers (each neuron's input
    column of its output projection); every other layer untouched."""
    names = list(scores)
    flat = torch.cat([scores[name] for name in names])
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.argsort(-flat, stable=True)[: min(n, flat.numel())]] = True
    out = {layer.name: torch.zeros(layer.weight.shape, dtype=torch.bool) for layer in layers}
    offset = 0
    by_name = {layer.name: layer for layer in layers}
    for name in names:
        count = scores[name].numel()
        neurons = chosen[offset : offset + count]
        out[name] = masking.expand_to_weight(neurons, by_name[name], "neuron_in").clone()
        offset += count
    return out
