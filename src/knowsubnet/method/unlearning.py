"""Finetuning unlearning baselines: change every weight of the masked layers a little, instead of
removing a few.

- GradDiff (gradient difference; Liu et al. 2022, as in TOFU / open-unlearning): gradient ascent
  on the TargetKG tails' cross-entropy, plus a retain term;
- NPO (negative preference optimisation; Zhang et al. 2024): -(2/beta) log sigmoid(-beta log
  (p_theta(tail) / p_original(tail))) per TargetKG fact, bounded where gradient ascent is not,
  plus the same retain term;
- RMU (representation misdirection for unlearning; Li et al. 2024, the WMDP paper): on activations,
  not outputs. At the output of one masked block l (`layer`, counted from the top), the TargetKG
  hidden states at the tail positions are pushed towards c * u (u a fixed random unit vector drawn
  from the run's seed, c `steering_coeff`) and the ControlKG (tail positions) and ControlLM (every
  position) hidden states held at the original model's: loss = MSE(h_T, c u) + alpha * (MSE(h_CKG,
  h_CKG orig) + MSE(h_CLM, h_CLM orig)), MSE over positions and hidden dimensions as in WMDP's code.
  Only the masked layers at or below block l train (those above cannot change h_l); the forward
  stops at block l.

GradDiff's and NPO's retain side is the mask's own: KL to the original model on ControlKG tails and
on ControlLM text, with its own weights (`lambda_controlkg`, `lambda_controllm`). The trained weights
are those the mask could remove (the linear layers of the same top blocks), so every method sees the
same parameters and data. `UnlearningTrainer` is the mask trainer with the mask's logits swapped for
the weights themselves (`WeightParams`): the same cached lower blocks, batches, validation (of the
whole model's outputs, RMU's too), checkpoint selection and exact resume; only the objective differs.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from knowsubnet.core.config import Adversary, Mask, NoiseRamp, Ramp, Rmu, Select, Train, Unlearning
from knowsubnet.core.errors import InputError
from knowsubnet.data.encoding import IGNORE
from knowsubnet.method import edits, objectives, registry
from knowsubnet.method.batching import flat_rows
from knowsubnet.method.masking import MaskableLayer
from knowsubnet.method.training import CONTROLLM_FINAL_CACHE_BYTES, MaskTrainer
from knowsubnet.models import precision

METHODS = tuple(registry.names(registry.FINETUNING))  # graddiff, npo, rmu


class WeightParams:
    """The masked layers' weights as trainable tensors: what the unlearning trainer optimises in
    place of mask logits (the same interface as `samplers.MaskLogits`). They train in fp32; the
    forwards see them in the compute dtype, cast once per step."""

    def __init__(self, layers: list[MaskableLayer], compute_dtype: torch.dtype = torch.float32):
        self.layers, self.compute_dtype = layers, compute_dtype
        self.weights = {layer.name: layer.weight.detach().clone().float().requires_grad_(True) for layer in layers}

    def parameters(self) -> list[torch.Tensor]:
        return list(self.weights.values())

    def effective_weights(self, generator=None, deterministic: bool = False, noise_scale: float = 1.0):
        return {k: v.to(self.compute_dtype) for k, v in self.weights.items()}

    def expected_density(self) -> torch.Tensor:
        return torch.zeros(())

    def density(self) -> float:
        """Share of the masked layers' weights changed so far."""
        changed = sum(
            int((w.detach() != layer.weight.detach()).sum()) for layer, w in zip(self.layers, self.weights.values())
        )
        return changed / sum(layer.weight.numel() for layer in self.layers)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.weights.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, value in state.items():
                self.weights[name].copy_(value)


def trainer_config(train: Train, cfg: Unlearning | Rmu) -> Train:
    """The mask trainer's settings for an unlearning run: its steps, learning rate and loss weights
    (lambda_suppress weighs the forget term; RMU's is 1 and alpha weighs both retain terms); no
    sparsity term, no noise; checkpoints selected on the TargetKG bar alone (no sparsity to meet)."""
    if isinstance(cfg, Rmu):
        lambdas = (1.0, cfg.alpha, cfg.alpha)
    else:
        lambdas = (cfg.lambda_forget, cfg.lambda_controlkg, cfg.lambda_controllm)
    return dataclasses.replace(
        train,
        steps=cfg.steps,
        lr=cfg.lr,
        warmup_frac=cfg.warmup_frac,
        lambda_suppress=lambdas[0],
        lambda_controlkg=lambdas[1],
        lambda_controllm=lambdas[2],
        lambda_expression=0.0,
        lambda_hidden=0.0,
        lambda_other_tails=0.0,
        adversary=Adversary(),  # the mask's own objectives stay the mask's
        sparsity_weight=Ramp(0.0, 0.0, 1.0),
        noise_scale=NoiseRamp(1.0, 1.0, 1.0),
        batch=cfg.batch,
        log_every=min(train.log_every, cfg.select_every),
        checkpoint_every=cfg.select_every,
        select=Select(every=cfg.select_every, min_sparsity=0.0, min_target_ratio=cfg.min_target_ratio),
    )


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


def control_vector(hidden_size: int, steering_coeff: float, seed: int) -> torch.Tensor:
    """RMU's target c * u: u is drawn as WMDP's code draws it, uniform in [0, 1)^d then scaled to unit
    norm (every component positive), from its own generator seeded with `seed` (so a resumed run
    draws the same); c = `steering_coeff`."""
    u = torch.rand(hidden_size, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    return steering_coeff * u / u.norm()


def rmu_forget(hidden: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
    """Mean over positions and dimensions of (h - c u)^2: `hidden` [P, d], `control` [d]."""
    return F.mse_loss(hidden.float(), control.expand(hidden.shape[0], -1))


def rmu_retain(hidden: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
    """Mean over positions and dimensions of (h - h_original)^2."""
    return F.mse_loss(hidden.float(), frozen.float())


class UnlearningTrainer(MaskTrainer):
    """GradDiff, NPO or RMU on the masked layers' weights (module doc)."""

    def __init__(
        self,
        model,
        targetkg,
        controlkg,
        controllm,
        mask_config: Mask,
        train_config: Train,
        method: str,
        cfg: Unlearning | Rmu,
        seed: int,
        **kwargs,
    ):
        if method not in METHODS:
            raise ValueError(f"unlearning method {method!r}: expected one of {', '.join(METHODS)}")
        if (method == "rmu") != isinstance(cfg, Rmu):
            raise ValueError(f"unlearning method {method!r}: got the settings of another method ({type(cfg).__name__})")
        self.method, self.unlearning = method, cfg
        super().__init__(
            model, targetkg, controlkg, controllm, mask_config, trainer_config(train_config, cfg), seed, **kwargs
        )
        self.mask = WeightParams(self.layers, self.dtype)
        if method == "rmu":
            self._setup_rmu(cfg)
        else:
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

    # -- RMU -----------------------------------------------------------------------------------

    @torch.no_grad()
    def _setup_rmu(self, cfg: Rmu) -> None:
        """The steered block, the weights trained (the masked layers at or below it), c * u, and the
        original model's hidden states at the block for every ControlKG tail position and, when
        they fit, every ControlLM position."""
        n_blocks = len(self.top.blocks)
        n_masked = n_blocks - self.first_block
        if cfg.layer > n_masked:
            raise InputError(
                f"params key 'baselines.rmu.layer': {cfg.layer} counts from the top of the masked "
                f"blocks, but only {n_masked} are masked (mask.top_k_blocks)"
            )
        self.rmu_block = n_blocks - cfg.layer
        self.trained = [layer for layer in self.layers if layer.block <= self.rmu_block]
        self.optimizer = precision.adam([self.mask.weights[layer.name] for layer in self.trained], cfg.lr, self.dtype)
        hidden_size = self.t_hidden.shape[-1]
        self.control = control_vector(hidden_size, cfg.steering_coeff, self.seed + 2).to(self.device)
        chunk = max(self.cfg.batch.controlkg, 1)
        parts = []
        for start in range(0, self.n_control, chunk):
            (h,) = self._kg_tail_hidden(None, [("control", torch.arange(start, min(start + chunk, self.n_control)))])
            parts.append(h.float())
        self.c_frozen = torch.cat(parts)  # flat in (fact, tail position) order, as the KL's c_ref
        self.lm_frozen = None
        if (
            self.lm_hidden is not None
            and self.lm_hidden.shape[0] * self.lm_hidden.shape[1] * hidden_size * 4 <= CONTROLLM_FINAL_CACHE_BYTES
        ):
            step = max(self.cfg.batch.controllm, 1)
            self.lm_frozen = torch.cat(
                [
                    self._layer_output(self.lm_hidden[start : start + step], None).float()
                    for start in range(0, self.n_lm, step)
                ]
            )

    def _layer_output(self, hidden: torch.Tensor, weights: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """The output of the steered block [B, T, d] from `hidden` entering the first masked block."""
        return self.top.block_output(hidden, self.rmu_block, weights)

    def _kg_tail_hidden(
        self, weights: dict[str, torch.Tensor] | None, sides: list[tuple[str, torch.Tensor]]
    ) -> list[torch.Tensor]:
        """The steered block's output at the tail positions of KG facts, all sides in one forward (one
        per length group with train.group_by_length): one [P_side, d] tensor per side, in the order of
        `_kg_tail_logits`."""
        return self._kg_tail_outputs(weights, sides, self._layer_output)

    def _controlkg_frozen(self, idx: torch.Tensor) -> torch.Tensor:
        """The original hidden states at the tail positions of ControlKG facts `idx`, in batch order."""
        rows = flat_rows(self.c_tail_count, self.c_tail_offset, idx)
        return self.c_frozen[rows.to(self.c_frozen.device)]

    def _rmu_step_loss(self, idx_t, idx_c, idx_lm):
        weights = {layer.name: self.mask.weights[layer.name].to(self.dtype) for layer in self.trained}
        target_h, control_h = self._kg_tail_hidden(weights, [("target", idx_t), ("control", idx_c)])
        forget = rmu_forget(target_h, self.control)
        zero = torch.zeros((), device=self.device)
        controllm = zero
        if idx_lm is not None:
            idx_lm = idx_lm.to(self.device)
            if self.lm_frozen is not None:
                frozen = self.lm_frozen[idx_lm]
            else:
                with torch.no_grad():
                    frozen = self._layer_output(self.lm_hidden[idx_lm], None)
            controllm = rmu_retain(self._layer_output(self.lm_hidden[idx_lm], weights), frozen)
        parts = {
            "suppress": forget,  # the log's columns: the forget term, the two retain MSEs (unweighted)
            "controlkg": rmu_retain(control_h, self._controlkg_frozen(idx_c)),
            "controllm": controllm,
            "expression": zero,
            "hidden": zero,
            "suppress_attacked": zero,
            "other_tails": zero,
            "sparsity_loss": zero,
        }
        return self._weighted(parts), parts

    def _weighted(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss: the forget term and the two retain terms, each with its weight."""
        cfg = self.cfg
        return (
            cfg.lambda_suppress * parts["suppress"]
            + cfg.lambda_controlkg * parts["controlkg"]
            + cfg.lambda_controllm * parts["controllm"]
        )

    # -- one step ------------------------------------------------------------------------------

    def _step_loss(self, idx_t, idx_c, idx_lm, weight_s, noise_scale):
        if self.method == "rmu":
            return self._rmu_step_loss(idx_t, idx_c, idx_lm)
        weights = self.mask.effective_weights()
        target_logits, control_logits = self._kg_tail_logits(weights, [("target", idx_t), ("control", idx_c)])
        targets = self.t_targets[idx_t.to(self.device)]
        if self.method == "npo":
            forget = npo_forget(target_logits, targets, self.t_ref[idx_t.to(self.device)], self.unlearning.beta)
        else:
            forget = graddiff_forget(target_logits, targets)
        zero = torch.zeros((), device=self.device)
        parts = {
            "suppress": forget,  # the log's `suppress` column holds the forget term
            "controlkg": objectives.controlkg_loss(control_logits, self._controlkg_ref(idx_c)),
            "controllm": (
                objectives.controllm_loss(*self._controllm_logits(weights, idx_lm)) if idx_lm is not None else zero
            ),
            "expression": zero,
            "hidden": zero,
            "suppress_attacked": zero,
            "other_tails": zero,
            "sparsity_loss": zero,
        }
        return self._weighted(parts), parts

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """The current weights, and a change of the same norm per matrix in a random direction, on
        the validation sets; remembers the weights when `select_checkpoint` prefers them."""
        edit = edits.Edit("weights", {k: v.detach().cpu() for k, v in self.mask.weights.items()}, {})
        random = edits.random_like(edit, self.layers, torch.Generator().manual_seed(self.seed))
        return self._record_validation(
            1.0 - self.mask.density(),
            self.validation_ppls(self.mask.weights),
            self.validation_ppls(edits.edited_weights(self.layers, random)),
        )
