"""The CSQA finetuner (original / remaining / random models trained alike in one mode, scored on the
question groups, resumable through core.checkpoint) and the finetune_csqa stage from files to files."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from knowsubnet.core import checkpoint
from knowsubnet.core.config import Csqa, Params
from knowsubnet.core.errors import InputError
from knowsubnet.core.io import write_json
from knowsubnet.core.progress import progress_bar
from knowsubnet.core.provenance import stamp
from knowsubnet.downstream.csqa.data import (GROUPS, N_CHOICES, Question, assemble_data, encode_questions,
                                             question_groups, read_linked_facts, read_questions)
from knowsubnet.downstream.csqa.model import (MODES, Variant, max_abs_removed_weight, pad_stack, prefix_states,
                                              removed_weight_masks)
from knowsubnet.downstream.csqa.stats import deltas_vs_original, group_accuracies
from knowsubnet.evaluation.ablation import mask_layers
from knowsubnet.method import masking
from knowsubnet.models.prepare import context_length, load_model, pick_device
from knowsubnet.models.top_blocks import TopBlocks

log = logging.getLogger(__name__)

VARIANTS = ("original", "remaining", "random")


class CSQAFinetuner:
    """Finetune original / remaining / random models in one mode and score the question groups.

    `model` stays untouched (each variant works on a deep copy). `masks` are the subnetwork
    (bool per mask entry, True = in the subnetwork, i.e. removed in the remaining model).
    """

    def __init__(self, model: nn.Module, tokenizer, layers: list[masking.MaskableLayer],
                 masks: Mapping[str, torch.Tensor], granularity: str, mode: str,
                 train: list[Question], groups: Mapping[str, list[Question]], settings: Csqa, seed: int,
                 device: str | torch.device = "cpu", checkpoint_path: str | Path | None = None,
                 progress: bool = True):
        if mode not in MODES:
            raise InputError(f"params key 'csqa.modes': unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        context = context_length(model)
        if context is not None and settings.max_length > context:
            raise InputError(f"params key 'csqa.max_length' = {settings.max_length}: the model reads at most "
                             f"{context} tokens")
        masks = {name: (v if v.dtype == torch.bool else v > 0).cpu() for name, v in masks.items()}
        masking.check_mask_matches(layers, masks, granularity, source="finetune_csqa")
        self.model, self.mode, self.settings, self.seed = model, mode, settings, int(seed)
        self.device = torch.device(device)
        self.layer_names = [layer.name for layer in layers]
        self.transposed = {layer.name: layer.transposed for layer in layers}
        self.first_block = min(layer.block for layer in layers)
        random_masks = masking.random_masks_like(masks, torch.Generator().manual_seed(self.seed))
        self.removed = {"original": {}, "remaining": removed_weight_masks(layers, masks, granularity),
                        "random": removed_weight_masks(layers, random_masks, granularity)}
        self.subnetwork_size = masking.subnetwork_size(layers, masks, granularity)
        self.sparsity = masking.sparsity(model, layers, masks, granularity)
        self.train_enc = encode_questions(tokenizer, train, settings.max_length)
        self.group_enc = {g: encode_questions(tokenizer, qs, settings.max_length) for g, qs in groups.items()}
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.progress = progress
        bs = settings.batch_size
        self.steps_per_epoch = math.ceil(len(train) / bs)
        self.steps = self.steps_per_epoch * settings.epochs[mode]
        self._prefix: dict[str, list[torch.Tensor]] | None = None

    # -- data --------------------------------------------------------------------------------

    def _prefixes(self) -> dict[str, list[torch.Tensor]]:
        """Hidden states entering the first masked block, per question (shared by all variants)."""
        if self._prefix is None:
            top = TopBlocks(self.model, self.first_block)
            self.model.to(self.device)
            self._prefix = prefix_states(top, {"train": self.train_enc, **self.group_enc},
                                         self.settings.eval_batch_size, self.device, self.progress)
        return self._prefix

    def _batch(self, which: str, index: Iterable[int]) -> dict[str, torch.Tensor]:
        enc = self.train_enc if which == "train" else self.group_enc[which]
        index = list(index)
        batch = {"last": torch.cat([enc.last[i] for i in index]), "labels": enc.labels[index]}
        if self.mode == "full":
            pad = 0
            batch["ids"] = pad_stack([enc.ids[i] for i in index], pad)
        else:
            prefix = self._prefixes()[which]
            batch["prefix"] = pad_stack([prefix[i] for i in index], 0.0)
        return batch

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 7, epoch]).permutation(len(self.train_enc.ids))

    def _step_index(self, step: int) -> np.ndarray:
        bs = self.settings.batch_size
        epoch, within = divmod(step, self.steps_per_epoch)
        return self._order(epoch)[within * bs:(within + 1) * bs]

    # -- features (head mode: the frozen model's features once per variant) --------------------

    @torch.no_grad()
    def _all_features(self, variant: Variant) -> dict[str, torch.Tensor]:
        out = {}
        chunk = self.settings.eval_batch_size
        for which, enc in [("train", self.train_enc)] + list(self.group_enc.items()):
            feats = []
            for start in range(0, len(enc.ids), chunk):
                batch = self._batch(which, range(start, min(start + chunk, len(enc.ids))))
                feats.append(variant.features(batch).float())
            out[which] = torch.cat(feats).view(len(enc.ids), N_CHOICES, -1)
        return out

    # -- training and scoring ----------------------------------------------------------------

    def _scores(self, variant: Variant, which: str, index, features) -> torch.Tensor:
        if features is not None:
            return variant.head(features[which][torch.as_tensor(list(index))].to(self.device))
        batch = self._batch(which, index)
        return variant.head(variant.features(batch)).view(-1, N_CHOICES)

    @torch.no_grad()
    def _evaluate(self, variant: Variant, features) -> dict[str, np.ndarray]:
        out = {}
        chunk = self.settings.eval_batch_size
        for group, enc in self.group_enc.items():
            correct = []
            for start in range(0, len(enc.ids), chunk):
                index = range(start, min(start + chunk, len(enc.ids)))
                scores = self._scores(variant, group, index, features).view(-1, N_CHOICES)
                correct.append((scores.argmax(dim=1).cpu() == enc.labels[list(index)]).numpy())
            out[group] = np.concatenate(correct).astype(np.float64)
        return out

    def fingerprint(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        for enc in [self.train_enc] + [self.group_enc[g] for g in sorted(self.group_enc)]:
            digest.update(",".join(enc.qids).encode())
        for variant in VARIANTS:
            for name in sorted(self.removed[variant]):
                digest.update(self.removed[variant][name].numpy().tobytes())
        keys = ("epochs", "lr", "batch_size", "weight_decay", "lora", "max_length", "log_every")
        return {"mode": self.mode, "seed": self.seed, "data_and_masks": digest.hexdigest(),
                "settings": json.dumps({k: getattr(self.settings, k) for k in keys}, sort_keys=True),
                "layers": ",".join(self.layer_names)}

    def _save(self, done: dict, current: dict | None) -> None:
        checkpoint.save(self.checkpoint_path, self.fingerprint(), {"done": done, "current": current})

    def _load(self) -> tuple[dict, dict | None]:
        """The variants done and the one in progress, from a checkpoint written for these inputs and
        params (core.checkpoint: any other checkpoint is set aside with a warning)."""
        state = checkpoint.load(self.checkpoint_path, self.fingerprint())
        if state is None:
            return {}, None
        log.info("resuming from %s (%d variants done)", self.checkpoint_path, len(state["done"]))
        return state["done"], state["current"]

    def _run_variant(self, name: str, done: dict, current: dict | None) -> dict[str, Any]:
        settings = self.settings
        started = time.perf_counter()
        variant = Variant(self.model, self.layer_names, self.transposed, self.removed[name], self.mode, settings,
                          self.seed, self.device, self.first_block)
        step, curve, elapsed, window = 0, [], 0.0, []
        if current is not None and current.get("variant") == name:
            variant.load_state(current["trainable"])
            variant.optimizer.load_state_dict(current["optimizer"])
            step, curve, elapsed = int(current["step"]), list(current["curve"]), float(current["elapsed"])
            window = [list(w) for w in current["window"]]
        features = self._all_features(variant) if self.mode == "head" else None
        bar = progress_bar(total=self.steps, initial=step, desc=f"{self.mode}/{name}", disable=not self.progress)
        try:
            while step < self.steps:
                index = self._step_index(step)
                labels = self.train_enc.labels[index].to(self.device)
                scores = self._scores(variant, "train", index, features).view(-1, N_CHOICES)
                loss = F.cross_entropy(scores, labels)
                variant.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                variant.optimizer.step()
                variant.rezero()
                step += 1
                window.append([loss.item(), float((scores.detach().argmax(1) == labels).float().mean())])
                if step % settings.log_every == 0 or step == self.steps:
                    curve.append({"step": step, "loss": float(np.mean([w[0] for w in window])),
                                  "train_acc": float(np.mean([w[1] for w in window]))})
                    window = []
                    bar.set_postfix(loss=f"{curve[-1]['loss']:.3f}")
                bar.update(1)
                if step % settings.checkpoint_every == 0 and step < self.steps:
                    self._save(done, {"variant": name, "step": step, "curve": curve, "window": window,
                                      "elapsed": elapsed + time.perf_counter() - started,
                                      "trainable": variant.state(), "optimizer": variant.optimizer.state_dict()})
        finally:
            bar.close()
        correct = self._evaluate(variant, features)
        max_removed = max_abs_removed_weight(variant.model, self.layer_names, self.removed[name], self.mode)
        variant.close()
        result = {
            "groups": {},  # filled below: the first key of a variant's results
            "curve": curve,
            "steps": step,
            "trainable_parameters": int(sum(p.numel() for p in variant.params)),
            "max_abs_removed_weight": max_removed,
            "wall_time_s": round(elapsed + time.perf_counter() - started, 3),
            "correct": {g: "".join("1" if c else "0" for c in v) for g, v in correct.items()},
        }
        result["groups"] = group_accuracies(correct, settings.bootstrap, self.seed)
        return result

    def run(self) -> dict[str, Any]:
        done, current = self._load()
        for name in VARIANTS:
            if name in done:
                continue
            log.info("finetuning %s model (%s mode, %d steps)", name, self.mode, self.steps)
            done[name] = self._run_variant(name, done, current)
            current = None
            self._save(done, None)
        return self._summary(done)

    def _summary(self, done: dict) -> dict[str, Any]:
        correct = {v: {g: np.array([c == "1" for c in done[v]["correct"][g]], dtype=np.float64) for g in GROUPS}
                   for v in VARIANTS}
        return {
            "mode": self.mode,
            "finetune_seed": self.seed,
            "n_train": len(self.train_enc.ids),
            "steps": self.steps,
            "groups": {g: {"n": len(self.group_enc[g].ids), "question_ids": self.group_enc[g].qids}
                       for g in GROUPS},
            "subnetwork_size": self.subnetwork_size,
            "sparsity": self.sparsity,
            "variants": {v: {k: done[v][k] for k in done[v] if k != "correct"} for v in VARIANTS},
            "delta_vs_original": deltas_vs_original(correct, self.settings.bootstrap, self.seed),
            "per_question_correct": {v: done[v]["correct"] for v in VARIANTS},
        }

    def discard_checkpoint(self) -> None:
        checkpoint.discard(self.checkpoint_path)


# ----------------------------------------------------------------------------------------------
# the stage's entry points: in memory, and from files to files


def finetune_csqa(model: nn.Module, tokenizer, mask_logits: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
                  triplets, target_facts, selected_facts, train_path: str | Path, dev_path: str | Path,
                  mode: str, settings: Csqa, seed: int, device: str | torch.device = "cpu",
                  checkpoint_path: str | Path | None = None, progress: bool = True,
                  mask_source: str = "mask") -> dict[str, Any]:
    """Everything `finetune_csqa` computes for one (model, target, seed, mode): see the package doc."""
    layers, granularity = mask_layers(model, dict(mask_logits), dict(metadata), mask_source)
    groups = question_groups(triplets, target_facts, selected_facts)
    train = read_questions(train_path)
    dev = read_questions(dev_path)
    train_set, eval_groups = assemble_data(train, dev, groups, settings.train_questions, settings.dev_questions,
                                           seed, train_source=str(train_path))
    log.info("CSQA: %d training questions, groups %s", len(train_set), {g: len(v) for g, v in eval_groups.items()})
    tuner = CSQAFinetuner(model, tokenizer, layers, mask_logits, granularity, mode, train_set, eval_groups, settings,
                          seed, device=device, checkpoint_path=checkpoint_path, progress=progress)
    result = tuner.run()
    result["granularity"] = granularity
    result["linked_questions"] = {"all": len(groups["linked"]), "removed": len(groups["removed"]),
                                  "kept": len(groups["kept"]),
                                  "unused": len(groups["linked"] - groups["removed"] - groups["kept"])}
    return result


def run_stage(params: Params, *, model: str, target: str, seed: int, mode: str, model_dir: Path, mask: Path,
              triplets: Path, splits_dir: Path, csqa_dir: Path, out: Path) -> dict[str, Any]:
    """The finetune_csqa stage: read the model, mask, triplets table, the target's TargetKG splits and
    CSQA's {train,dev}_rand_split.jsonl; finetune in `mode`; write the result JSON to `out`
    (atomically). `seed` is the mask's seed (the finetuning seed unless csqa.seed is set). A run resumes
    from `.<out name>.ckpt` next to `out`, which is removed once `out` is written. Returns the result."""
    settings = params.csqa
    spec = params.targets.get(target)
    if spec is None:
        raise InputError(f"params key 'targets': no target named {target!r}")
    device = pick_device(settings.device, key="csqa.device")
    finetune_seed = seed if settings.seed is None else settings.seed
    start = time.monotonic()

    table, target_facts, selected = read_linked_facts(triplets, splits_dir, target, spec)
    lm, tokenizer = load_model(model_dir, "cpu")
    logits, metadata = masking.load_mask(mask)
    checkpoint_path = out.with_name(f".{out.name}.ckpt")
    result = finetune_csqa(
        lm, tokenizer, logits, metadata, table, target_facts, selected,
        csqa_dir / "train_rand_split.jsonl", csqa_dir / "dev_rand_split.jsonl", mode, settings,
        finetune_seed, device=device, checkpoint_path=checkpoint_path, mask_source=str(mask))
    result = {"model": model, "target": target, "seed": seed, **result, "mask": str(mask),
              "provenance": stamp({"csqa": params.section("csqa"), "target": spec}, device=str(device),
                                  wall_time_s=round(time.monotonic() - start, 3))}
    write_json(out, result)
    checkpoint.discard(checkpoint_path)  # only once the result is in place
    for variant in VARIANTS:
        groups = result["variants"][variant]["groups"]
        log.info("%s: %s", variant, ", ".join(f"{g} {groups[g]['acc']:.3f} (n={groups[g]['n']})" for g in GROUPS))
    return result
