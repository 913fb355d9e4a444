"""The mask trainer: learn which weights of the top-k blocks hold the TargetKG knowledge.

Only the work the method needs is done per step:

- The blocks below the first masked block are frozen and unmasked, so their output is computed
  ONCE for every training fact and ControlLM block and cached; each step runs only the masked
  blocks, the final norm and the LM head (`models.top_blocks.TopBlocks`).
- The original model's ControlKG tail log-probs are cached once (ControlLM's: its final hidden states).
- W_eff = W * (1 - m) is built once per step for every forward of the step (`functional_call`);
  TargetKG and ControlKG facts share one forward. `_step_loss` is the objective (the finetuning
  baselines, `method.unlearning`, swap it and the logits for the weights themselves).

Every `select.every` steps the deterministic mask, and a random mask of the same size per matrix,
are scored on held-out validation sets through the same cached top blocks (`validate`); the mask
returned is the one `select_checkpoint` prefers (params `train.select`), not necessarily the last.

A run checkpoints (logits, Adam state, generators, step, log) every `checkpoint_every` steps and
resumes from it; on CPU a killed-and-resumed run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from knowsubnet.core import checkpoint, digest
from knowsubnet.core.config import Mask, Train
from knowsubnet.core.errors import InputError
from knowsubnet.core.progress import progress_bar
from knowsubnet.data.encoding import IGNORE, row_lengths
from knowsubnet.method import objectives
from knowsubnet.method.adversary import WeightAdversary
from knowsubnet.method.batching import draw, flat_rows, length_groups, per_row
from knowsubnet.method.masking import (
    MaskableLayer,
    apply_mask,
    binary_masks,
    find_maskable_layers,
    random_masks_like,
    subnetwork_size,
)
from knowsubnet.method.samplers import MaskLogits
from knowsubnet.method.selection import VAL_COLUMNS, ValidationSets, select_checkpoint, selection_summary
from knowsubnet.method.tail_reference import TailReference
from knowsubnet.models import precision
from knowsubnet.models.prepare import pick_device
from knowsubnet.models.top_blocks import TopBlocks, check_prefix_path
from knowsubnet.scoring.facts import fact_scores_from_logits, ppl_from_nll

log = logging.getLogger(__name__)

# Largest ControlLM hidden-state cache for which the original final hidden states are cached as well.
CONTROLLM_FINAL_CACHE_BYTES = 4 << 30
# suppress_attacked: the suppression loss on the remaining model after the adversary's attacks (train.adversary)
LOG_COLUMNS = ("step", "loss", "suppress", "controlkg", "controllm", "expression", "hidden", "suppress_attacked")
LOG_COLUMNS += ("other_tails", "sparsity_loss", "sparsity_weight", "noise_scale", "lr", "density")

# Final losses are measured with the deterministic mask on at most this many ControlLM blocks.
FINAL_CONTROLLM_BLOCKS = 32


@dataclass
class TrainResult:
    logits: dict[str, torch.Tensor]  # the selected mask's logits per layer (CPU float32)
    log: list[dict[str, float]]
    final_losses: dict[str, float]
    steps: int
    wall_time_s: float
    device: str
    layers: list[MaskableLayer] = field(repr=False, default_factory=list)
    selection: dict[str, Any] | None = None  # chosen step, criterion, original val PPLs


class MaskTrainer:
    """Learns mask logits for `model`'s top blocks. See the module docstring.

    targetkg / controlkg: FactSet-like (`input_ids` [N, T], `targets` [N, T] with -100 off-tail);
    controllm: LongTensor [n_blocks, block_size] or None (no ControlLM term).
    """

    def __init__(
        self,
        model: nn.Module,
        targetkg,
        controlkg,
        controllm: torch.Tensor | None,
        mask_config: Mask,
        train_config: Train,
        seed: int,
        checkpoint_path: str | Path | None = None,
        progress: bool = True,
        callback: Callable[[MaskTrainer, int], None] | None = None,
        validation: ValidationSets | None = None,
    ):
        self.mcfg, self.cfg, self.seed = mask_config, train_config, int(seed)
        self.device = pick_device(train_config.device, key="train.device")
        self.dtype = precision.resolve(train_config.dtype, self.device, key="train.dtype")
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.progress, self.callback = progress, callback

        # Frozen model, eval mode (no dropout); nothing of it is trained.
        self.model = model.to(self.device).eval()
        self.model.requires_grad_(False)
        self.layers = find_maskable_layers(self.model, mask_config.top_k_blocks)
        self.first_block = min(layer.block for layer in self.layers)
        self.top = TopBlocks(self.model, self.first_block, self.dtype)
        self.mask = MaskLogits.from_params(
            self.layers,
            mask_config,
            device=self.device,
            frozen={layer.name: self.top.weight(layer.name) for layer in self.layers},
        )
        self.optimizer = precision.adam(self.mask.parameters(), train_config.lr, self.dtype)

        # Batches are drawn on the CPU (device-independent); mask noise on the training device.
        self.batch_gen = torch.Generator().manual_seed(self.seed)
        self.noise_gen = torch.Generator(device=self.device).manual_seed(self.seed + 1)
        self.step_count = 0
        self.log: list[dict[str, float]] = []
        self.elapsed = 0.0
        self.last: dict[str, float] = {}
        self.val_rows: list[dict[str, float]] = []  # one per validation, in step order
        self.best: tuple[int, dict[str, torch.Tensor]] | None = None  # (index in val_rows, logits on CPU)

        for name, facts in (("TargetKG", targetkg), ("ControlKG", controlkg)):
            if len(facts.input_ids) == 0:
                raise InputError(f"{name} training set is empty: expected at least one fact")
        self.n_target, self.n_control = len(targetkg.input_ids), len(controlkg.input_ids)
        self.n_lm = 0 if controllm is None else int(controllm.shape[0])
        self.input_digests = digest.training_inputs(targetkg, controlkg, controllm)  # for the checkpoint fingerprint
        self._verify_and_cache(targetkg, controlkg, controllm)
        self.adversary = None
        if train_config.adversary.weight > 0:
            if "relearn" in train_config.adversary.attacks and self.lm_hidden is None:
                raise InputError(
                    "params key 'train.adversary.attacks': relearn finetunes on ControlLM blocks, and none are "
                    "cached: expected controllm blocks, train.batch.controllm > 0 and train.lambda_controllm > 0"
                )
            args = (self.layers, self.top, self.lm_hidden, controllm, mask_config.granularity, self.seed)
            self.adversary = WeightAdversary(train_config.adversary, *args)
        self.validation = validation
        if validation is not None:
            self._cache_validation(validation)

    # -- setup -------------------------------------------------------------------------------

    @torch.no_grad()
    def _prefix_all(self, input_ids: torch.Tensor, chunk: int) -> torch.Tensor:
        parts = []  # the frozen lower blocks run once per input, in fp32 whatever the compute dtype
        for start in range(0, input_ids.shape[0], chunk):
            parts.append(self.top.prefix(input_ids[start : start + chunk].to(self.device)))
        return torch.cat(parts)

    @torch.no_grad()
    def _verify_and_cache(self, targetkg, controlkg, controllm):
        dev = self.device
        check_prefix_path(self.model, TopBlocks(self.model, self.first_block), targetkg.input_ids[:2].to(dev))

        # KG facts: TargetKG and ControlKG share one forward per step, so both caches get a common width.
        width = max(targetkg.input_ids.shape[1], controlkg.input_ids.shape[1])

        def widen(x: torch.Tensor, fill: int) -> torch.Tensor:
            return F.pad(x, (0, width - x.shape[1]), value=fill)

        self.t_targets = widen(targetkg.targets, IGNORE).to(dev)
        self.c_targets = widen(controlkg.targets, IGNORE).to(dev)
        for name, targets in (("TargetKG", self.t_targets), ("ControlKG", self.c_targets)):
            if bool(((targets != IGNORE).sum(dim=1) == 0).any()):
                raise InputError(f"{name}: a fact has no tail-token position (targets all -100)")
        self.t_len = row_lengths(self.t_targets.cpu())
        self.c_len = row_lengths(self.c_targets.cpu())
        chunk = max(self.cfg.batch.targetkg, self.cfg.batch.controlkg, 1)
        log.info(
            "caching hidden states entering block %d for %d TargetKG + %d ControlKG facts",
            self.first_block,
            self.n_target,
            self.n_control,
        )
        self.t_hidden = self._pad_hidden(self._prefix_all(targetkg.input_ids, chunk), width)
        self.c_hidden = self._pad_hidden(self._prefix_all(controlkg.input_ids, chunk), width)

        # Original ControlKG tail log-probs, flat in (fact, position) order, plus per-fact offsets.
        self.c_tail_count, self.c_tail_offset = per_row(self.c_targets != IGNORE)
        refs = []
        for start in range(0, self.n_control, chunk):
            idx = torch.arange(start, min(start + chunk, self.n_control))
            (logits,) = self._kg_tail_logits(None, [("control", idx)])
            refs.append(F.log_softmax(logits.float(), dim=-1))
        ref = torch.cat(refs)
        # fp16 keeps log-probs to ~1e-3 relative; only used when the fp32 cache would be large.
        self.c_ref = ref if ref.numel() * 4 <= (1 << 31) else ref.half()

        def original_tail_logits(idx: torch.Tensor) -> torch.Tensor:
            return self._kg_tail_logits(None, [("target", idx)])[0]

        # the original at TargetKG tails: their tokens, and what NPO's loss and the other tails' loss read
        self.tails = TailReference(self.t_targets, original_tail_logits, chunk, self.cfg.lambda_other_tails > 0)

        if self.n_lm and self.cfg.batch.controllm and self.cfg.lambda_controllm > 0:
            log.info("caching hidden states entering block %d for %d ControlLM blocks", self.first_block, self.n_lm)
            self.lm_hidden = self._prefix_all(controllm, max(self.cfg.batch.controllm, 1))
            # The original final hidden states too, when they fit: the ControlLM reference is then one matmul.
            self.lm_final = None
            if self.lm_hidden.numel() * self.lm_hidden.element_size() <= CONTROLLM_FINAL_CACHE_BYTES:
                chunk = max(self.cfg.batch.controllm, 1)
                parts = []
                for start in range(0, self.n_lm, chunk):
                    parts.append(self.top.forward(self.lm_hidden[start : start + chunk]))
                self.lm_final = torch.cat(parts)
        else:
            self.lm_hidden = self.lm_final = None
        if self.cfg.lambda_hidden > 0:
            self._cache_hidden_reference()

    def _suppress(self, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The suppression loss at the tails of TargetKG facts `idx` (`train.suppress_objective`)."""
        if self.cfg.suppress_objective == "uniform":
            return objectives.suppress_loss(logits)
        return self.tails.npo(logits, idx, self.cfg.npo_beta)

    @torch.no_grad()
    def _cache_hidden_reference(self) -> None:
        """For the hidden-state loss: the block it reads, each TargetKG training fact's prompt
        positions, and the original model's contribution of the masked blocks there (flat, fact by fact)."""
        n_blocks = len(self.top.blocks)
        if self.cfg.hidden_layer > n_blocks - self.first_block:
            raise InputError(
                f"params key 'train.hidden_layer': {self.cfg.hidden_layer} counts from the top of the masked "
                f"blocks, but only {n_blocks - self.first_block} are masked (mask.top_k_blocks)"
            )
        self.hidden_block = n_blocks - self.cfg.hidden_layer
        self.t_prompt = objectives.prompt_positions(self.t_targets)
        self.t_prompt_count, self.t_prompt_offset = per_row(self.t_prompt)
        chunk, parts = max(self.cfg.batch.targetkg, 1), []
        for start in range(0, self.n_target, chunk):
            idx = torch.arange(start, min(start + chunk, self.n_target), device=self.device)
            parts.append(self._masked_contribution(None, idx))
        self.t_contribution = torch.cat(parts)

    def _masked_contribution(self, weights: dict[str, torch.Tensor] | None, idx: torch.Tensor) -> torch.Tensor:
        """What the masked blocks up to `hidden_block` add to the residual stream at the prompt positions
        of TargetKG training facts `idx`: [positions, d], fp32, row-major as `flat_rows` orders them."""
        width = int(self.t_len[idx.cpu()].max())
        entering = self.t_hidden[idx, :width]
        out = self.top.block_output(entering, self.hidden_block, weights)
        return (out.float() - entering.float())[self.t_prompt[idx, :width]]

    @torch.no_grad()
    def _cache_validation(self, val: ValidationSets) -> None:
        """Hidden states entering the first masked block for the validation sets, and the
        original model's validation perplexities."""
        self.val_caches = {}
        for name, facts in (("val_target", val.targetkg), ("val_control", val.controlkg)):
            if facts is None or len(facts.input_ids) == 0:
                raise InputError(f"{name.replace('val_', '')}KG validation set is empty: expected at least one fact")
            targets = facts.targets.to(self.device)
            hidden = self._prefix_all(facts.input_ids, max(self.cfg.batch.targetkg, 1))
            self.val_caches[name] = (hidden, targets, row_lengths(targets.cpu()))
        self.val_lm_hidden = None
        if val.controllm is not None and val.controllm.shape[0] > 0:
            self.val_lm_blocks = val.controllm.to(self.device)
            self.val_lm_hidden = self._prefix_all(val.controllm, max(self.cfg.batch.controllm, 1))
        self.val_original = self.validation_ppls(None)
        log.info(
            "validation: %d TargetKG, %d ControlKG facts, %d ControlLM blocks; original PPL %s",
            len(val.targetkg.input_ids),
            len(val.controlkg.input_ids),
            0 if self.val_lm_hidden is None else self.val_lm_hidden.shape[0],
            {k: round(v, 3) for k, v in self.val_original.items()},
        )

    @torch.no_grad()
    def validation_ppls(self, weights: dict[str, torch.Tensor] | None) -> dict[str, float]:
        """PPL of the model with `weights` (None: original) on the validation sets, defined as in
        evaluation: exp(mean over facts of the fact's mean tail CE); exp(mean token CE) for LM."""
        out = {}
        chunk = max(self.cfg.batch.targetkg, self.cfg.batch.controlkg, 1)
        for name, key in (("val_target", "targetkg"), ("val_control", "controlkg")):
            targets = self.val_caches[name][1]
            per_fact = []
            for start in range(0, targets.shape[0], chunk):
                idx = torch.arange(start, min(start + chunk, targets.shape[0]))
                (logits,) = self._kg_tail_logits(weights, [(name, idx)])
                tg = targets[idx.to(self.device)]
                where = tg != IGNORE  # tail positions, row-major as _kg_tail_logits returns them
                scores = fact_scores_from_logits(logits.float(), where.nonzero()[:, 0], tg[where], len(idx))
                per_fact.append(scores["nll"])
            out[key] = ppl_from_nll(float(torch.cat(per_fact).mean()))
        if self.val_lm_hidden is not None:
            total, count = 0.0, 0
            step = max(self.cfg.batch.controllm, 1)
            for start in range(0, self.val_lm_hidden.shape[0], step):
                final = self.top.forward(self.val_lm_hidden[start : start + step], weights)
                ids = self.val_lm_blocks[start : start + step]
                for row in range(final.shape[0]):
                    logits = self.top.logits(final[row, :-1]).float()
                    total += float(F.cross_entropy(logits, ids[row, 1:], reduction="sum").double())
                    count += ids.shape[1] - 1
            out["controllm"] = ppl_from_nll(total / count)
        return out

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Score the deterministic mask and a random mask of the same per-matrix size on the
        validation sets; remember the mask when `select_checkpoint` prefers it."""
        binary = binary_masks(self.mask.state_dict())  # the evaluation subnetwork: logit > 0
        in_subnet = subnetwork_size(self.layers, binary, self.mcfg.granularity)
        scores = self.validation_ppls(self.mask.effective_weights(deterministic=True))
        generator = torch.Generator().manual_seed(self.seed)
        random = random_masks_like({k: v.cpu() for k, v in binary.items()}, generator)
        random_scores = self.validation_ppls(apply_mask(self.layers, random, self.mcfg.granularity))
        return self._record_validation(
            1.0 - in_subnet / sum(layer.weight.numel() for layer in self.layers), scores, random_scores
        )

    def _record_validation(self, sparsity: float, scores: dict, random_scores: dict) -> dict[str, float]:
        row = {"step": self.step_count, "val_sparsity": sparsity}
        for key in ("targetkg", "controlkg", "controllm"):
            row[f"val_{key}_ppl"] = scores.get(key, math.nan)
            row[f"val_random_{key}_ppl"] = random_scores.get(key, math.nan)
        self.val_rows.append(row)
        chosen = select_checkpoint(self.val_rows, self.val_original, self.cfg.select)
        if chosen == len(self.val_rows) - 1:
            self.best = (chosen, {k: v.cpu() for k, v in self.mask.state_dict().items()})
        return row

    def _due_validation(self, t: int) -> bool:
        every = self.cfg.select.every
        return self.validation is not None and (t == self.cfg.steps or (every > 0 and t % every == 0))

    @staticmethod
    def _pad_hidden(hidden: torch.Tensor, width: int) -> torch.Tensor:  # zeros past a row's end (causal: unseen)
        return F.pad(hidden, (0, 0, 0, width - hidden.shape[1]))

    def _controlkg_ref(self, idx: torch.Tensor) -> torch.Tensor:
        rows = flat_rows(self.c_tail_count, self.c_tail_offset, idx)
        return self.c_ref[rows.to(self.c_ref.device)]

    # -- one step ----------------------------------------------------------------------------

    def _kg_tail_logits(
        self, weights: dict[str, torch.Tensor] | None, sides: list[tuple[str, torch.Tensor]]
    ) -> list[torch.Tensor]:
        """Remaining-model logits at the tail positions of KG facts, all sides in one forward (one per
        group of similar length with train.group_by_length).

        sides: ("target" | "control", fact indices); returns one [P_side, V] tensor per side.
        """
        return self._kg_tail_outputs(weights, sides, self.top.forward, self.top.logits)

    def _kg_tail_outputs(
        self, weights: dict[str, torch.Tensor] | None, sides: list[tuple[str, torch.Tensor]], forward, head=None
    ) -> list[torch.Tensor]:
        """`forward(hidden, weights)` at the tail positions of KG facts (then `head`, if given), all
        sides in one call per length group: one tensor per side, in batch order."""
        caches = {
            "target": (self.t_hidden, self.t_targets, self.t_len),
            "control": (self.c_hidden, self.c_targets, self.c_len),
            **getattr(self, "val_caches", {}),
        }
        lengths = torch.cat([caches[name][2][idx] for name, idx in sides])
        width = int(lengths.max())  # the batch's longest row: nothing past it is gathered
        hidden, targets, counts = [], [], []
        for name, idx in sides:
            cache_hidden, cache_targets, _ = caches[name]
            idx = idx.to(self.device)
            hidden.append(cache_hidden[idx, :width])
            targets.append(cache_targets[idx, :width])
            counts.append(int((targets[-1] != IGNORE).sum()))
        hidden, targets = torch.cat(hidden), torch.cat(targets)
        # A random batch pads facts to its longest (about 40 % padding on SmolLM2). With
        # train.group_by_length, rows run in groups of similar length, each cut to its own longest
        # row; causal attention makes this differ from one padded forward by float rounding only.
        groups = length_groups(lengths) if self.cfg.group_by_length else [torch.arange(len(lengths))]
        parts, rows = [], []
        for group in groups:
            group_width = int(lengths[group].max())
            g = group.to(self.device)
            final = forward(hidden[g, :group_width], weights)
            local_rows, cols = objectives.tail_positions(targets[g, :group_width])
            parts.append(final[local_rows, cols])
            rows.append(g[local_rows])
        # back to batch order: facts side by side, tail positions row-major, as the callers expect
        order = torch.argsort(torch.cat(rows), stable=True)
        out = torch.cat(parts)[order]
        return list(torch.split(head(out) if head is not None else out, counts))

    def _controllm_logits(
        self, weights: dict[str, torch.Tensor] | None, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(remaining-model logits, original log-probs) at every position of ControlLM blocks `idx`."""
        idx = idx.to(self.device)
        hidden = self.lm_hidden[idx]
        with torch.no_grad():
            final = self.lm_final[idx] if self.lm_final is not None else self.top.forward(hidden)
            ref = F.log_softmax(self.top.logits(final), dim=-1, dtype=torch.float32)
        return self.top.logits(self.top.forward(hidden, weights)), ref

    def _losses(
        self, weights: dict[str, torch.Tensor], idx_t: torch.Tensor, idx_c: torch.Tensor, idx_lm: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """The three model losses of the remaining model (`weights` = W_eff) on one batch."""
        target_logits, control_logits = self._kg_tail_logits(weights, [("target", idx_t), ("control", idx_c)])
        out = {
            "suppress": self._suppress(target_logits, idx_t),
            "controlkg": objectives.controlkg_loss(control_logits, self._controlkg_ref(idx_c)),
        }
        if idx_lm is not None:
            out["controllm"] = objectives.controllm_loss(*self._controllm_logits(weights, idx_lm))
        else:
            out["controllm"] = torch.zeros((), device=self.device)
        out["other_tails"] = torch.zeros((), device=self.device)
        if self.cfg.lambda_other_tails > 0:
            out["other_tails"] = self.tails.other_tails_loss(target_logits, idx_t)
        if self.cfg.lambda_expression > 0:
            # The subnetwork alone (in the masked layers) must still express TargetKG:
            # W * m = W - W_eff, from the same draw.
            subnet = {layer.name: self.top.weight(layer.name) - weights[layer.name] for layer in self.layers}
            (logits,) = self._kg_tail_logits(subnet, [("target", idx_t)])
            out["expression"] = F.cross_entropy(logits.float(), self.tails.tokens(idx_t))
        else:
            out["expression"] = torch.zeros((), device=self.device)
        if self.cfg.lambda_hidden > 0:
            rows = flat_rows(self.t_prompt_count, self.t_prompt_offset, idx_t).to(self.device)
            contribution = self._masked_contribution(weights, idx_t.to(self.device))
            out["hidden"] = objectives.hidden_loss(contribution, self.t_contribution[rows])
        else:
            out["hidden"] = torch.zeros((), device=self.device)
        return out

    def step(self) -> dict[str, float]:
        cfg = self.cfg
        t = self.step_count + 1
        lr = objectives.learning_rate(t, cfg.steps, cfg.lr, cfg.warmup_frac)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        weight_s, noise_scale = (
            objectives.ramp(t, cfg.steps, r.start, r.end, r.ramp_from) for r in (cfg.sparsity_weight, cfg.noise_scale)
        )

        idx_t = draw(self.n_target, cfg.batch.targetkg, self.batch_gen)
        idx_c = draw(self.n_control, cfg.batch.controlkg, self.batch_gen)
        idx_lm = draw(self.n_lm, cfg.batch.controllm, self.batch_gen) if self.lm_hidden is not None else None

        loss, parts = self._step_loss(idx_t, idx_c, idx_lm, weight_s, noise_scale)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step_count = t

        row = {
            "step": t,
            "loss": loss.item(),
            **{k: v.item() for k, v in parts.items()},
            "sparsity_weight": weight_s,
            "noise_scale": noise_scale,
            "lr": lr,
        }
        del parts  # free W_eff and activations before the next step allocates its own
        self.last = row
        return row

    def _step_loss(
        self, idx_t: torch.Tensor, idx_c: torch.Tensor, idx_lm: torch.Tensor | None, weight_s: float, noise_scale: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one step and its parts (LOG_COLUMNS): the objective of the mask."""
        cfg = self.cfg
        # W_eff, once for all forwards of the step
        weights = self.mask.effective_weights(self.noise_gen, noise_scale=noise_scale)
        parts = self._losses(weights, idx_t, idx_c, idx_lm)
        parts["suppress_attacked"] = torch.zeros((), device=self.device)
        if self.adversary is not None:  # the same facts, after the adversary's attacks
            attacked = self.adversary.attacked(self.step_count + 1, weights, self.mask.state_dict())
            parts["suppress_attacked"] = self._suppress(*self._kg_tail_logits(attacked, [("target", idx_t)]), idx_t)
        parts["sparsity_loss"] = self.mask.expected_density()
        loss = (
            cfg.lambda_suppress * parts["suppress"]
            + cfg.lambda_controlkg * parts["controlkg"]
            + cfg.lambda_controllm * parts["controllm"]
            + cfg.lambda_expression * parts["expression"]
            + cfg.lambda_hidden * parts["hidden"]
            + cfg.lambda_other_tails * parts["other_tails"]
            + cfg.adversary.weight * parts["suppress_attacked"]
            + weight_s * parts["sparsity_loss"]
        )
        return loss, parts

    # -- checkpoints ---------------------------------------------------------------------------

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed (`core.checkpoint` adds the thread count): params,
        seed, masked layers, the content of every input (model weights, TargetKG / ControlKG tokens,
        ControlLM blocks) and the compute dtype that `dtype: auto` resolved to."""
        if getattr(self, "_model_digest", None) is None:
            self._model_digest = digest.state_dict(self.model)  # the model is frozen: hash it once
        return {
            "mask": dataclasses.asdict(self.mcfg),
            "train": {k: v for k, v in dataclasses.asdict(self.cfg).items() if k not in ("device",)},
            "seed": self.seed,
            "layers": [layer.name for layer in self.layers],
            "model_weights": self._model_digest,
            **self.input_digests,
            "compute_dtype": precision.name(self.dtype),  # auto resolves per machine: its bits differ
        }

    def save_checkpoint(self) -> None:
        checkpoint.save(
            self.checkpoint_path,
            self.fingerprint(),
            {
                "step": int(self.step_count),
                "logits": {k: v.detach().cpu() for k, v in self.mask.state_dict().items()},
                "optimizer": self.optimizer.state_dict(),
                "batch_gen": self.batch_gen.get_state(),
                "noise_gen": self.noise_gen.get_state(),
                "log": [dict(row) for row in self.log],
                "elapsed": float(self.elapsed),
                "val_rows": [dict(row) for row in self.val_rows],
                "best": self.best,
                "adversary": None if self.adversary is None else self.adversary.state_dict(),
            },
        )

    def load_checkpoint(self) -> bool:
        """Resume from the checkpoint file if it was written for these inputs and params (core.checkpoint)."""
        state = checkpoint.load(self.checkpoint_path, self.fingerprint())
        if state is None:
            return False
        self.mask.load_state_dict({k: v.to(self.device) for k, v in state["logits"].items()})
        self.optimizer.load_state_dict(state["optimizer"])
        self.batch_gen.set_state(state["batch_gen"])
        self.noise_gen.set_state(state["noise_gen"])
        self.step_count = int(state["step"])
        self.log = [dict(row) for row in state["log"]]
        self.elapsed = float(state["elapsed"])
        self.val_rows = list(state["val_rows"])
        self.best = state["best"]
        if self.adversary is not None:
            self.adversary.load_state_dict(state["adversary"])
        log.info("resumed from %s at step %d", self.checkpoint_path, self.step_count)
        return True

    def discard_checkpoint(self) -> None:
        checkpoint.discard(self.checkpoint_path)

    # -- the loop ------------------------------------------------------------------------------

    def train(self) -> TrainResult:
        cfg = self.cfg
        self.load_checkpoint()
        started = time.perf_counter() - self.elapsed
        bar = progress_bar(total=cfg.steps, initial=self.step_count, desc="mask", disable=not self.progress)
        try:
            while self.step_count < cfg.steps:
                row = self.step()
                t = self.step_count
                validated = self.validate() if self._due_validation(t) else {}
                if t % cfg.log_every == 0 or t == cfg.steps or validated:
                    self.log.append(self._log_row(row, validated))
                    bar.set_postfix(loss=f"{row['loss']:.3f}", density=f"{self.log[-1]['density']:.4f}")
                self.elapsed = time.perf_counter() - started
                if t % cfg.checkpoint_every == 0 or t == cfg.steps:
                    self.save_checkpoint()
                bar.update(1)
                if self.callback is not None:
                    self.callback(self, t)
        finally:
            bar.close()
        selection = None
        if self.best is not None:
            index, logits = self.best
            self.mask.load_state_dict({k: v.to(self.device) for k, v in logits.items()})
            selection = selection_summary(self.val_rows, index, self.val_original, self.cfg.select)
            log.info(
                "kept the mask of step %d (%s)",
                selection["step"],
                "meets the criterion" if selection["qualified"] else "no validation met the criterion: the last",
            )
        final = self.final_losses()
        return TrainResult(
            logits={k: v.cpu() for k, v in self.mask.state_dict().items()},
            log=list(self.log),
            final_losses=final,
            steps=self.step_count,
            wall_time_s=self.elapsed,
            device=str(self.device),
            layers=self.layers,
            selection=selection,
        )

    def _log_row(self, row: dict[str, float], validated: dict[str, float]) -> dict[str, float]:
        out = dict(row, density=self.mask.density())
        return {**{k: out[k] for k in LOG_COLUMNS}, **{k: validated.get(k) for k in VAL_COLUMNS}}

    @torch.no_grad()
    def final_losses(self) -> dict[str, float]:
        """Losses of the deterministic remaining model on every training fact and on the first
        `final_controllm_blocks` ControlLM blocks (means over tail positions / block positions)."""
        cfg = self.cfg
        weights = self.mask.effective_weights(deterministic=True)
        out = {}
        for name, n, chunk, key in (
            ("target", self.n_target, cfg.batch.targetkg, "suppress"),
            ("control", self.n_control, cfg.batch.controlkg, "controlkg"),
        ):
            total, count = 0.0, 0
            for start in range(0, n, chunk):
                idx = torch.arange(start, min(start + chunk, n))
                (logits,) = self._kg_tail_logits(weights, [(name, idx)])
                loss = (
                    self._suppress(logits, idx)
                    if name == "target"
                    else objectives.controlkg_loss(logits, self._controlkg_ref(idx))
                )
                total += loss.item() * logits.shape[0]
                count += logits.shape[0]
            out[key] = total / count
        out["controllm"] = 0.0
        if self.lm_hidden is not None:
            n_blocks = min(self.n_lm, FINAL_CONTROLLM_BLOCKS)
            chunk = max(cfg.batch.controllm, 1)
            total = 0.0
            for start in range(0, n_blocks, chunk):
                idx = torch.arange(start, min(start + chunk, n_blocks))
                total += objectives.controllm_loss(*self._controllm_logits(weights, idx)).item() * len(idx)
            out["controllm"] = total / n_blocks
        out["sparsity_loss"] = self.mask.expected_density().item()
        out["density"] = self.mask.density()
        return out
