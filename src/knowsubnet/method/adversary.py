"""A relearning adversary inside the mask's training (params `train.adversary`; tamper resistance, as
TAR, Tamirisa et al. 2024, in its first-order form).

The robustness stage finetunes the remaining model on unrelated text (Adam, the removed weights held
at zero) and measures how much of the removal comes back. Here the same attack runs inside training:
a perturbation `delta` of the masked layers' remaining weights takes one Adam step on a batch of
ControlLM training text each mask step, and starts again from zero every `restart_every` steps, so
that across training the mask meets finetunes of every age from 0 to `restart_every` steps. The
mask's extra loss is the suppression loss on W_eff + delta: which weights to remove so that the facts
stay suppressed after the finetune. First-order: no gradient flows through the finetune's steps.

Caveat for the robustness numbers: the adversary finetunes on the ControlLM training blocks, the text
the robustness stage relearns on (`wikitext`); its relearning is then no longer an unseen attack.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from knowsubnet.core.config import Adversary
from knowsubnet.method.batching import draw
from knowsubnet.method.masking import MaskableLayer, expand_to_weight
from knowsubnet.models import precision
from knowsubnet.models.top_blocks import TopBlocks


class RelearnAdversary:
    """The perturbation per masked layer, its Adam state and its batch generator (see the module docstring).

    lm_hidden: the cached hidden states entering the first masked block of the ControlLM training
    blocks [N, L, d]; lm_ids: those blocks' tokens [N, L], whose next tokens the finetune learns."""

    def __init__(
        self,
        cfg: Adversary,
        layers: list[MaskableLayer],
        top: TopBlocks,
        lm_hidden: torch.Tensor,
        lm_ids: torch.Tensor,
        granularity: str,
        seed: int,
    ):
        self.cfg, self.layers, self.top, self.granularity = cfg, layers, top, granularity
        self.lm_hidden, self.lm_ids = lm_hidden, lm_ids.to(lm_hidden.device)
        self.generator = torch.Generator().manual_seed(int(seed) + 2)  # the mask's draws use seed and seed + 1
        self.delta = {
            layer.name: torch.zeros_like(layer.weight, dtype=torch.float32, requires_grad=True) for layer in layers
        }
        self.optimizer = precision.adam(list(self.delta.values()), cfg.lr, top.compute_dtype)

    def finetune_step(self, step: int, weights: dict[str, torch.Tensor], removed: dict[str, torch.Tensor]) -> float:
        """One Adam step of the finetune on the remaining model `weights` (detached) + delta, delta held at
        zero on the `removed` weights (mask entry per layer); restarts from zero at the first step of each
        `restart_every`. Returns the text loss."""
        if (step - 1) % self.cfg.restart_every == 0:
            with torch.no_grad():
                for value in self.delta.values():
                    value.zero_()
            self.optimizer.state.clear()
        idx = draw(len(self.lm_ids), self.cfg.batch, self.generator).to(self.lm_hidden.device)
        final = self.top.forward(self.lm_hidden[idx], self.perturbed(weights, detach=True))
        logits = self.top.logits(final[:, :-1]).float()
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

    def perturbed(self, weights: dict[str, torch.Tensor], detach: bool = False) -> dict[str, torch.Tensor]:
        """W_eff + delta: the remaining model after the finetune so far (delta is a constant to the mask's
        loss; `detach` makes W_eff one to the finetune's)."""
        return {
            name: (value.detach() if detach else value) + (self.delta[name] if detach else self.delta[name].detach())
            for name, value in weights.items()
        }

    def state_dict(self) -> dict:
        return {
            "delta": {k: v.detach().cpu() for k, v in self.delta.items()},
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for name, value in state["delta"].items():
                self.delta[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
