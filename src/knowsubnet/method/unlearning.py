"""Finetuning unlearning baselines: change every weight of the masked layers a little, instead of
removing a few.

- GradDiff (gradient difference; Liu et al. 2022, as in TOFU / open-unlearning): gradient ascent
  on the TargetKG tails' cross-entropy, plus a retain term;
- NPO (negative preference optimisation; Zhang et al. 2024): -(2/beta) log sigmoid(-beta log
  (p_theta(tail) / p_original(tail))) per TargetKG fact, bounded where gradient ascent is not,
  plus the same retain term.

The retain side is the mask's own: KL to the original model on ControlKG tails and on ControlLM
text, with its own weights (`lambda_controlkg`, `lambda_controllm`). The trained weights are those
the mask could remove (the linear layers of the same top blocks), so both methods see the same
parameters and data. `UnlearningTrainer` is the mask trainer with the mask's logits swapped for the
weights themselves (`WeightParams`): the same cached lower blocks, batches, validation, checkpoint
selection and exact resume; only the objective differs.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from knowsubnet.core.config import Mask, Ramp, Select, Train, Unlearning
from knowsubnet.data.encoding import IGNORE
from knowsubnet.method import edits, objectives
from knowsubnet.method.masking import MaskableLayer
from knowsubnet.method.training import MaskTrainer
from knowsubnet.models import precision

METHODS = ("graddiff", "npo")


class WeightParams:
    """The masked layers' weights as trainable tensors: what the unlearning trainer optimises in
    place of mask logits (the same interface as `masking.MaskLogits`). They train in fp32; the
    forwards see them in the compute dtype, cast once per step."""

    def __init__(self, layers: list[MaskableLayer], compute_dtype: torch.dtype = torch.float32):
        self.layers, self.compute_dtype = layers, compute_dtype
        self.weights = {l.name: l.weight.detach().clone().float().requires_grad_(True) for l in layers}

    def parameters(self) -> list[torch.Tensor]:
        return list(self.weights.values())

    def effective_weights(self, generator=None, deterministic: bool = False, noise_scale: float = 1.0):
        return {k: v.to(self.compute_dtype) for k, v in self.weights.items()}

    def expected_density(self) -> torch.Tensor:
        return torch.zeros(())

    def density(self) -> float:
        """Share of the masked layers' weights changed so far."""
        changed = sum(int((w.detach() != l.weight.detach()).sum()) for l, w in zip(self.layers, self.weights.values()))
        return changed / sum(l.weight.numel() for l in self.layers)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.weights.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, value in state.items():
                self.weights[name].copy_(value)


def trainer_config(train: Train, cfg: Unlearning) -> Train:
    """The mask trainer's settings for an unlearning run: its steps, learning rate and loss weights
    (lambda_suppress weighs the forget term); no sparsity term, no noise; checkpoints selected on
    the TargetKG bar alone (no sparsity to meet)."""
    return dataclasses.replace(
        train, steps=cfg.steps, lr=cfg.lr, warmup_frac=cfg.warmup_frac, lambda_suppress=cfg.lambda_forget,
        lambda_controlkg=cfg.lambda_controlkg, lambda_controllm=cfg.lambda_controllm, lambda_expression=0.0,
        sparsity_weight=Ramp(0.0, 0.0, 1.0), noise_scale=Ramp(1.0, 1.0, 1.0), batch=cfg.batch,
        log_every=min(train.log_every, cfg.select_every), checkpoint_every=cfg.select_every,
        select=Select(every=cfg.select_every, min_sparsity=0.0, min_target_ratio=cfg.min_target_ratio))


def per_fact_logprob(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over each fact's tail tokens of log p(token): `logits` [P, V] at the tail positions of
    `targets` [B, T] in row-major order -> [B]."""
    rows, _ = objectives.tail_positions(targets)
    token_lp = -F.cross_entropy(logits.float(), targets[targets != IGNORE], reduction="none")
    return torch.zeros(targets.shape[0], device=logits.device).index_add(0, rows, token_lp)


def graddiff_forget(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Gradient ascent: minus the mean tail-token cross-entropy."""
    return -F.cross_entropy(logits.float(), targets[targets != IGNORE])


def npo_forget(logits: torch.Tensor, targets: torch.Tensor, ref_logprob: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO: mean over facts of -(2/beta) log sigmoid(-beta (log p_theta - log p_original))."""
    log_ratio = per_fact_logprob(logits, targets) - ref_logprob
    return -(2.0 / beta) * F.logsigmoid(-beta * log_ratio).mean()


class UnlearningTrainer(MaskTrainer):
    """GradDiff or NPO on the masked layers' weights (module doc)."""

    def __init__(self, model, targetkg, controlkg, controllm, mask_config: Mask, train_config: Train,
                 method: str, cfg: Unlearning, seed: int, **kwargs):
        if method not in METHODS:
            raise ValueError(f"unlearning method {method!r}: expected one of {', '.join(METHODS)}")
        self.method, self.unlearning = method, cfg
        super().__init__(model, targetkg, controlkg, controllm, mask_config, trainer_config(train_config, cfg),
                         seed, **kwargs)
        self.mask = WeightParams(self.layers, self.dtype)
        self.optimizer = precision.adam(self.mask.parameters(), cfg.lr, self.dtype)
        self.t_ref = None
        if method == "npo":  # the original model's log p(tail) of every TargetKG training fact
            with torch.no_grad():
                parts = []
                for start in range(0, self.n_target, max(cfg.batch.targetkg, 1)):
                    idx = torch.arange(start, min(start + cfg.batch.targetkg, self.n_target))
                    (logits,) = self._kg_tail_logits(None, [("target", idx)])
                    parts.append(per_fact_logprob(logits, self.t_targets[idx.to(self.device)]))
                self.t_ref = torch.cat(parts)

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "method": self.method, "unlearning": dataclasses.asdict(self.unlearning)}

    def _step_loss(self, idx_t, idx_c, idx_lm, weight_s, noise_scale):
        cfg = self.cfg
        weights = self.mask.effective_weights()
        target_logits, control_logits = self._kg_tail_logits(weights, [("target", idx_t), ("control", idx_c)])
        targets = self.t_targets[idx_t.to(self.device)]
        if self.method == "npo":
            forget = npo_forget(target_logits, targets, self.t_ref[idx_t.to(self.device)], self.unlearning.beta)
        else:
            forget = graddiff_forget(target_logits, targets)
        zero = torch.zeros((), device=self.device)
        parts = {"suppress": forget,  # the log's `suppress` column holds the forget term
                 "controlkg": objectives.controlkg_loss(control_logits, self._controlkg_ref(idx_c)),
                 "controllm": (objectives.controllm_loss(*self._controllm_logits(weights, idx_lm))
                               if idx_lm is not None else zero),
                 "expression": zero, "sparsity_loss": zero}
        loss = cfg.lambda_suppress * forget + cfg.lambda_controlkg * parts["controlkg"] + \
            cfg.lambda_controllm * parts["controllm"]
        return loss, parts

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """The current weights, and a change of the same norm per matrix in a random direction, on
        the validation sets; remembers the weights when `select_checkpoint` prefers them."""
        edit = edits.Edit("weights", {k: v.detach().cpu() for k, v in self.mask.weights.items()}, {})
        random = edits.random_like(edit, self.layers, torch.Generator().manual_seed(self.seed))
        return self._record_validation(1.0 - self.mask.density(), self.validation_ppls(self.mask.weights),
                                       self.validation_ppls(edits.edited_weights(self.layers, random)))
