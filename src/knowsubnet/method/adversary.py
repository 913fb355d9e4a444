"""Attacks on the remaining model inside the mask's training (params `train.adversary`; tamper resistance,
as TAR, Tamirisa et al. 2024, in its first-order form).

The robustness stage attacks a removal two ways and measures how much of it comes back: it finetunes
the remaining model on unrelated text (Adam, the removed weights held at zero), and it rounds the weights
to 4 bits. Here the same attacks run inside training, on the masked layers:

- relearn: a perturbation `delta` of the remaining weights takes one Adam step on a batch of ControlLM
  training text each mask step, and starts again from zero every `restart_every` steps, so that across
  training the mask meets finetunes of every age from 0 to `restart_every` steps;
- quantize: the (finetuned) remaining weights rounded as gguf would (`models.gguf_rounding`), the
  gradient passed straight through the rounding.

The mask's extra loss is the suppression loss on the attacked model: which weights to remove so that the
facts stay suppressed after the attack. First-order: no gradient flows through the finetune's steps.

Caveat for the robustness numbers: relearn finetunes on the ControlLM training blocks, the text the
robustness stage relearns on (`wikitext`), at the same learning rate; that relearning is then no longer an
unseen attack (its batches, seeds and length differ). Rounding here covers the masked layers only; the
robustness stage rounds every block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from knowsubnet.core.config import Adversary
from knowsubnet.method.batching import draw
from knowsubnet.method.masking import MaskableLayer, binary_masks, expand_to_weight
from knowsubnet.models import precision
from knowsubnet.models.gguf_rounding import quantize_weight
from knowsubnet.models.top_blocks import TopBlocks


class WeightAdversary:
    """The attacks of `cfg.attacks` on the masked layers' remaining weights (see the module docstring).

    lm_hidden: the cached hidden states entering the first masked block of the ControlLM training
    blocks [N, L, d]; lm_ids: those blocks' tokens [N, L], whose next tokens the finetune learns."""

    def __init__(
        self,
        cfg: Adversary,
        layers: list[MaskableLayer],
        top: TopBlocks,
        lm_hidden: torch.Tensor | None,
        lm_ids: torch.Tensor | None,
        granularity: str,
        seed: int,
    ):
        self.cfg, self.layers, self.top, self.granularity = cfg, layers, top, granularity
        self.relearn, self.quantize = "relearn" in cfg.attacks, "quantize" in cfg.attacks
        self.transposed = {layer.name: layer.transposed for layer in layers}
        self.delta: dict[str, torch.Tensor] = {}
        if self.relearn:
            self.lm_hidden, self.lm_ids = lm_hidden, lm_ids.to(lm_hidden.device)
            self.generator = torch.Generator().manual_seed(int(seed) + 2)  # the mask's draws use seed and seed + 1
            self.delta = {
                layer.name: torch.zeros_like(layer.weight, dtype=torch.float32, requires_grad=True) for layer in layers
            }
            self.optimizer = precision.adam(list(self.delta.values()), cfg.lr, top.compute_dtype)

    def attacked(self, step: int, weights: dict[str, torch.Tensor], logits: dict[str, torch.Tensor]):
        """The remaining model `weights` (W_eff of this step, differentiable in the mask) after the attacks:
        the relearning finetune one step further (the weights the mask `logits` remove held at zero), then
        the rounding."""
        if self.relearn:
            self._finetune_step(step, weights, binary_masks(logits))
            weights = {name: value + self.delta[name].detach() for name, value in weights.items()}
        if self.quantize:  # straight through: the rounded values forward, the identity backward
            weights = {
                name: value + (self._rounded(name, value.detach()) - value.detach()) for name, value in weights.items()
            }
        return weights

    def _rounded(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        return quantize_weight(weight, self.cfg.bits, transposed=self.transposed[name])

    def _finetune_step(self, step: int, weights: dict[str, torch.Tensor], removed: dict[str, torch.Tensor]) -> float:
        """One Adam step of the finetune on the remaining model (detached) + delta, delta held at zero on the
        removed weights (mask entry per layer); restarts from zero at the first step of each `restart_every`.
        Returns the text loss."""
        if (step - 1) % self.cfg.restart_every == 0:
            with torch.no_grad():
                for value in self.delta.values():
                    value.zero_()
            self.optimizer.state.clear()
        idx = draw(len(self.lm_ids), self.cfg.batch, self.generator).to(self.lm_hidden.device)
        finetuned = {name: value.detach() + self.delta[name] for name, value in weights.items()}
        logits = self.top.logits(self.top.forward(self.lm_hidden[idx], finetuned)[:, :-1]).float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), self.lm_ids[idx, 1:].reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():  # the removed weights stay removed, as the robustness stage's hold_zero
            for layer in self.layers:
                zero = expand_to_weight(
                    removed[layer.name].to(layer.weight.device, torch.bool), layer, self.granularity
                )
                self.delta[layer.name].masked_fill_(zero, 0.0)
        return float(loss.detach())

    def state_dict(self) -> dict:
        if not self.relearn:
            return {}
        return {
            "delta": {k: v.detach().cpu() for k, v in self.delta.items()},
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if not self.relearn:
            return
        with torch.no_grad():
            for name, value in state["delta"].items():
                self.delta[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
