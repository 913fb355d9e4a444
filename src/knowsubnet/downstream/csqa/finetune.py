"""The CSQA finetuner (original / remaining / random models trained alike in one mode, scored on the
question groups, resumable through core.checkpoint) and the finetune_csqa stage from files to files."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from knowsubnet.core import checkpoint
from knowsubnet.core.config import Csqa, Params
from knowsubnet.core.errors import InputError
from knowsubnet.core.progress import progress_bar
from knowsubnet.core.provenance import stamp
from knowsubnet.data import factsets
from knowsubnet.data.splits import SPLITS, csqa_ids
from knowsubnet.downstream.csqa.data import (
    Encoded,
    Question,
    assemble_data,
    encode_questions,
    question_groups,
    read_linked_facts,
    read_questions,
)
from knowsubnet.downstream.csqa.features import head_features, length_order
from knowsubnet.downstream.csqa.model import (
    MODES,
    Variant,
    max_abs_removed_weight,
    new_head,
    packed_inputs,
    prefix_states,
    removed_weight_masks,
)
from knowsubnet.downstream.csqa.stats import diff_of_diffs, group_accuracies, length_bias, paired_delta
from knowsubnet.evaluation import probes, robustness_stats
from knowsubnet.evaluation.ablation import mask_layers
from knowsubnet.evaluation.csqa_result import CsqaResult
from knowsubnet.evaluation.variants import Variants
from knowsubnet.method import edits, masking
from knowsubnet.models import precision
from knowsubnet.models.prepare import context_length, load_model, pick_device
from knowsubnet.models.top_blocks import TopBlocks
from knowsubnet.scoring.sentences import score_sentences

log = logging.getLogger(__name__)

VARIANTS = ("original", "remaining", "random")


def version_name(variant: str, seed: int) -> str:
    """The model version a variant is under finetuning seed `seed`: each seed draws its own random
    removal, so the random variant's spread is inside the seed variance."""
    return f"random:{seed}" if variant == "random" else variant


class CSQAFinetuner:
    """Finetune original / remaining / random models in one mode, for each finetuning seed, and score
    the question groups.

    `model` stays untouched (lora / full variants work on a deep copy; head mode only reads it).
    `masks` are the subnetwork (bool per mask entry, True = in the subnetwork, i.e. removed in the
    remaining model). A finetuning seed sets the head's initialisation, the batch order, the LoRA
    initialisation and the random removal.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        layers: list[masking.MaskableLayer],
        masks: Mapping[str, torch.Tensor],
        granularity: str,
        mode: str,
        train: list[Question],
        groups: Mapping[str, list[Question]],
        settings: Csqa,
        seeds: list[int],
        device: str | torch.device = "cpu",
        checkpoint_path: str | Path | None = None,
        progress: bool = True,
    ):
        if mode not in MODES:
            raise InputError(f"params key 'csqa.modes': unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        context = context_length(model)
        if context is not None and settings.max_length > context:
            raise InputError(
                f"params key 'csqa.max_length' = {settings.max_length}: the model reads at most {context} tokens"
            )
        masks = {name: (v if v.dtype == torch.bool else v > 0).cpu() for name, v in masks.items()}
        masking.check_mask_matches(layers, masks, granularity, source="finetune_csqa")
        self.model, self.layers, self.mode, self.settings = model, layers, mode, settings
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        self.layer_names = [layer.name for layer in layers]
        self.transposed = {layer.name: layer.transposed for layer in layers}
        self.first_block = min(layer.block for layer in layers)
        self.granularity = granularity
        # each version's mask (mask granularity); `removed` the same expanded to the weights' shape
        self.masks = {"original": None, "remaining": masks}
        for seed in self.seeds:
            self.masks[version_name("random", seed)] = masking.random_masks_like(
                masks, torch.Generator().manual_seed(seed)
            )
        self.removed = {v: removed_weight_masks(layers, m, granularity) for v, m in self.masks.items()}
        self.subnetwork_size = masking.subnetwork_size(layers, masks, granularity)
        self.sparsity = masking.sparsity(model, layers, masks, granularity)
        self.groups = dict(groups)
        self.train_enc = encode_questions(tokenizer, train, settings.max_length)
        self.group_enc = {g: encode_questions(tokenizer, qs, settings.max_length) for g, qs in groups.items()}
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.progress = progress
        self.steps_per_epoch = math.ceil(len(train) / settings.batch_size)
        self.steps = self.steps_per_epoch * settings.epochs[mode]
        self._prefix: dict[str, list[torch.Tensor]] | None = None
        self._fingerprint: dict[str, Any] | None = None

    def _encodings(self) -> dict[str, Encoded]:
        return {"train": self.train_enc, **self.group_enc}

    # -- batches -----------------------------------------------------------------------------

    def _prefixes(self) -> dict[str, list[torch.Tensor]]:
        """LoRA: hidden states entering the first masked block, per question ([L_q, d]), shared by
        all variants."""
        if self._prefix is None:
            top = TopBlocks(self.model, self.first_block)
            self.model.to(self.device)
            self._prefix = {}
            for which, enc in self._encodings().items():
                parts: list[torch.Tensor] = [torch.empty(0)] * len(enc.ids)
                order = length_order(enc)
                for start in range(0, len(order), self.settings.eval_batch_size):
                    index = order[start : start + self.settings.eval_batch_size]
                    hidden = prefix_states(top, enc, index, self.device)["prefix"].cpu()
                    for row, i in enumerate(index):
                        parts[i] = hidden[row, : enc.ids[i].shape[0]].clone()
                self._prefix[which] = parts
        return self._prefix

    def _batch(self, which: str, index: Iterable[int]) -> dict[str, torch.Tensor]:
        enc = self._encodings()[which]
        index = list(index)
        batch = packed_inputs(enc, index, self.model.dtype)
        if self.mode == "lora":
            prefix = self._prefixes()[which]
            width = batch["input_ids"].shape[1]
            batch["prefix"] = torch.stack([F.pad(prefix[i], (0, 0, 0, width - prefix[i].shape[0])) for i in index])
        return batch

    def _step_index(self, step: int, seed: int) -> np.ndarray:
        bs = self.settings.batch_size
        epoch, within = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([seed, 7, epoch]).permutation(len(self.train_enc.ids))
        return order[within * bs : (within + 1) * bs]

    # -- checkpoint --------------------------------------------------------------------------

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must have been written for (computed once: it hashes every version's
        removed weights, and a run saves many times)."""
        if self._fingerprint is None:
            self._fingerprint = self._compute_fingerprint()
        return self._fingerprint

    def _compute_fingerprint(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        for enc in [self.train_enc] + [self.group_enc[g] for g in sorted(self.group_enc)]:
            digest.update(",".join(enc.qids).encode())
        for version in sorted(self.removed):
            for name in sorted(self.removed[version]):
                digest.update(self.removed[version][name].numpy().tobytes())
        keys = ("epochs", "lr", "head_lr", "batch_size", "weight_decay", "lora", "max_length", "log_every", "dtype")
        return {
            "mode": self.mode,
            "seeds": ",".join(map(str, self.seeds)),
            "data_and_masks": digest.hexdigest(),
            "settings": json.dumps({k: getattr(self.settings, k) for k in keys}, sort_keys=True),
            "layers": ",".join(self.layer_names),
        }

    def _save(self, state: dict[str, Any]) -> None:
        checkpoint.save(self.checkpoint_path, self.fingerprint(), state)

    # -- head mode: heads on cached features ------------------------------------------------

    def _features(self, state: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        if state.get("features_done"):
            return state["features"]
        top = TopBlocks(
            self.model.to(self.device),
            self.first_block,
            precision.resolve(self.settings.dtype, self.device, key="csqa.dtype"),
        )
        partial = state.get("features_partial")

        def save(progress_state):
            self._save({**state, "features_partial": progress_state})

        weights = {
            v: masking.apply_mask(self.layers, m, self.granularity) if m is not None else {}
            for v, m in self.masks.items()
        }
        features = head_features(
            top,
            self._encodings(),
            weights,
            self.settings.eval_batch_size,
            self.device,
            state=partial,
            save=save if self.checkpoint_path else None,
            progress=self.progress,
        )
        state.pop("features_partial", None)
        state.update(features=features, features_done=True)
        self._save(state)
        return features

    def _train_head(self, features: Mapping[str, torch.Tensor], seed: int) -> dict[str, Any]:
        settings, started = self.settings, time.perf_counter()
        head = new_head(self.model, seed)
        optimizer = torch.optim.AdamW(head.parameters(), lr=settings.head_lr, weight_decay=settings.weight_decay)
        curve, window = [], []
        for step in range(1, self.steps + 1):
            index = torch.as_tensor(self._step_index(step - 1, seed))
            scores, labels = head(features["train"][index]), self.train_enc.labels[index]
            loss = F.cross_entropy(scores, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            window.append([loss.item(), float((scores.detach().argmax(1) == labels).float().mean())])
            if step % settings.log_every == 0 or step == self.steps:
                curve.append(self._curve_point(step, window))
                window = []
        with torch.no_grad():
            picks = {g: head(features[g]).argmax(dim=1).numpy() for g in self.group_enc}
        return {
            "picks": _digits(picks),
            "curve": curve,
            "steps": self.steps,
            "trainable_parameters": int(sum(p.numel() for p in head.parameters())),
            "max_abs_removed_weight": None,
            "wall_time_s": round(time.perf_counter() - started, 3),
        }

    @staticmethod
    def _curve_point(step: int, window: list[list[float]]) -> dict[str, float]:
        return {
            "step": step,
            "loss": float(np.mean([w[0] for w in window])),
            "train_acc": float(np.mean([w[1] for w in window])),
        }

    # -- lora and full modes: finetune a copy of the model ------------------------------------

    @torch.no_grad()
    def _picks(self, variant: Variant) -> dict[str, np.ndarray]:
        out = {}
        chunk = self.settings.eval_batch_size
        for group, enc in self.group_enc.items():
            picks = []
            for start in range(0, len(enc.ids), chunk):
                batch = self._batch(group, range(start, min(start + chunk, len(enc.ids))))
                picks.append(variant.head(variant.features(batch)).argmax(dim=1).cpu().numpy())
            out[group] = np.concatenate(picks) if picks else np.zeros(0, dtype=int)
        return out

    def _finetune(self, name: str, seed: int, current: dict | None, state: dict[str, Any]) -> dict[str, Any]:
        settings = self.settings
        started = time.perf_counter()
        variant = Variant(
            self.model,
            self.layer_names,
            self.transposed,
            self.removed[version_name(name, seed)],
            self.mode,
            settings,
            seed,
            self.device,
            self.first_block,
        )
        step, curve, elapsed, window = 0, [], 0.0, []
        if current is not None and current.get("run") == f"{seed}/{name}":
            variant.load_state(current["trainable"])
            variant.optimizer.load_state_dict(current["optimizer"])
            step, curve, elapsed = int(current["step"]), list(current["curve"]), float(current["elapsed"])
            window = [list(w) for w in current["window"]]
        bar = progress_bar(
            total=self.steps, initial=step, desc=f"{self.mode}/{name}/seed{seed}", disable=not self.progress
        )
        try:
            while step < self.steps:
                index = self._step_index(step, seed)
                labels = self.train_enc.labels[index].to(self.device)
                scores = variant.head(variant.features(self._batch("train", index)))
                loss = F.cross_entropy(scores, labels)
                variant.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                variant.optimizer.step()
                variant.rezero()
                step += 1
                window.append([loss.item(), float((scores.detach().argmax(1) == labels).float().mean())])
                if step % settings.log_every == 0 or step == self.steps:
                    curve.append(self._curve_point(step, window))
                    window = []
                    bar.set_postfix(loss=f"{curve[-1]['loss']:.3f}")
                bar.update(1)
                if step % settings.checkpoint_every == 0 and step < self.steps:
                    self._save(
                        {
                            **state,
                            "current": {
                                "run": f"{seed}/{name}",
                                "step": step,
                                "curve": curve,
                                "window": window,
                                "elapsed": elapsed + time.perf_counter() - started,
                                "trainable": variant.state(),
                                "optimizer": variant.optimizer.state_dict(),
                            },
                        }
                    )
        finally:
            bar.close()
        picks = self._picks(variant)
        max_removed = max_abs_removed_weight(variant.model, self.layer_names, variant.removed, self.mode)
        variant.close()
        return {
            "picks": _digits(picks),
            "curve": curve,
            "steps": step,
            "trainable_parameters": int(sum(p.numel() for p in variant.params)),
            "max_abs_removed_weight": max_removed,
            "wall_time_s": round(elapsed + time.perf_counter() - started, 3),
        }

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        state = checkpoint.load(self.checkpoint_path, self.fingerprint()) or {}
        if state:
            log.info("resuming from %s (%d runs done)", self.checkpoint_path, len(state.get("done", {})))
        state.setdefault("done", {})
        features = self._features(state) if self.mode == "head" else None
        for seed in self.seeds:
            for name in VARIANTS:
                key = f"{seed}/{name}"
                if key in state["done"]:
                    continue
                if features is not None:
                    state["done"][key] = self._train_head(features[version_name(name, seed)], seed)
                else:
                    log.info("finetuning %s model (%s mode, seed %d, %d steps)", name, self.mode, seed, self.steps)
                    state["done"][key] = self._finetune(name, seed, state.pop("current", None), state)
                    self._save(state)
        return self._summary(state["done"])

    def _summary(self, done: dict[str, dict[str, Any]]) -> dict[str, Any]:
        labels = {g: enc.labels.numpy() for g, enc in self.group_enc.items()}
        picks = {
            v: {
                g: np.array([[int(c) for c in done[f"{s}/{v}"]["picks"][g]] for s in self.seeds], dtype=int).reshape(
                    len(self.seeds), -1
                )
                for g in self.group_enc
            }
            for v in VARIANTS
        }
        correct = {
            v: {g: (picks[v][g] == labels[g][None, :]).astype(np.float64) for g in self.group_enc} for v in VARIANTS
        }
        samples, seed = self.settings.bootstrap, self.seeds[0]
        return {
            "mode": self.mode,
            "finetune_seeds": self.seeds,
            "n_train": len(self.train_enc.ids),
            "steps": self.steps,
            "groups": {
                g: {"n": len(self.group_enc[g].ids), "question_ids": self.group_enc[g].qids} for g in self.group_enc
            },
            "subnetwork_size": self.subnetwork_size,
            "sparsity": self.sparsity,
            "accuracy": {v: group_accuracies(correct[v], samples, seed) for v in VARIANTS},
            "seed_accuracy": {
                v: {
                    g: [float(x) if x.size else None for x in correct[v][g].mean(axis=1)] if correct[v][g].size else []
                    for g in self.group_enc
                }
                for v in VARIANTS
            },
            "delta": {
                f"{a} - {b}": {
                    g: paired_delta(correct[a][g], correct[b][g], samples, seed, i)
                    for i, g in enumerate(self.group_enc)
                }
                for a, b in CONTRASTS
            },
            "diff_of_diffs": {
                f"{a} - {b}": {
                    f"{g} vs {ref}": diff_of_diffs(correct[a], correct[b], g, ref, samples, seed, 10 * i + j)
                    for j, (g, ref) in enumerate(DOD_PAIRS)
                }
                for i, (a, b) in enumerate(CONTRASTS[:2])
            },
            "length": {v: {g: length_bias(picks[v][g], self.groups[g]) for g in self.group_enc} for v in VARIANTS},
            "runs": {
                f"{s}/{v}": {k: done[f"{s}/{v}"][k] for k in done[f"{s}/{v}"]} for s in self.seeds for v in VARIANTS
            },
        }

    def discard_checkpoint(self) -> None:
        checkpoint.discard(self.checkpoint_path)


# The differences reported, and the groups the difference of differences compares: the removed
# questions (known and suppressed, or all) against the other half's (the main contrast: the same
# construction, so the answer-length artifact cancels) and against the length-matched dev questions.
CONTRASTS = (("remaining", "original"), ("remaining", "random"), ("random", "original"))
DOD_PAIRS = (("removed_known", "kept"), ("removed", "kept"), ("removed_known", "dev_matched"))


def _digits(picks: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Picked choice per question as a string of digits 0-4 (compact in JSON)."""
    return {g: "".join(str(int(c)) for c in v) for g, v in picks.items()}


# ----------------------------------------------------------------------------------------------
# the stage's entry points: in memory, and from files to files


def suppressed_facts(
    model: nn.Module,
    tokenizer,
    layers: list[masking.MaskableLayer],
    masks: Mapping[str, torch.Tensor],
    granularity: str,
    facts: pd.DataFrame,
    threshold: float,
    batch_size: int,
    scored_positions: str,
    device: torch.device,
) -> pd.DataFrame:
    """`facts` (verbalised rows with a bool `known` column) with nll_original / nll_removed of each
    fact's best template and `suppressed`: the removal raised its tail PPL by at least `threshold` x."""
    variants = Variants(model, layers, edits.mask_edit(dict(masks), granularity), seed=0)
    sentences = probes.best_template("targetkg", facts.reset_index())
    scored = score_sentences(
        variants, tokenizer, sentences, batch_size, device, scored_positions, names=("original", "removed")
    )
    out = facts.reset_index()[["uuid", "known"]].copy()
    out["nll_original"], out["nll_removed"] = scored["nll_original"].to_numpy(), scored["nll_removed"].to_numpy()
    # one sentence per fact: its share of suppressed sentences is 0 or 1
    out["suppressed"] = (
        robustness_stats.suppressed_share(scored, "removed", threshold).reindex(out["uuid"]).to_numpy() == 1
    )
    return out


def finetune_csqa(
    model: nn.Module,
    tokenizer,
    mask_logits: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
    triplets,
    target_facts,
    selected_facts,
    train_path: str | Path,
    dev_path: str | Path,
    mode: str,
    settings: Csqa,
    seeds: list[int],
    device: str | torch.device = "cpu",
    checkpoint_path: str | Path | None = None,
    progress: bool = True,
    mask_source: str = "mask",
    fact_status: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Everything `finetune_csqa` computes for one (model, target, mask seed, mode): see the package
    doc. `fact_status` (`suppressed_facts`) restricts `removed_known` to the questions of facts that
    were known and suppressed; without it every removed question counts."""
    layers, granularity = mask_layers(model, dict(mask_logits), dict(metadata), mask_source)
    groups = question_groups(triplets, target_facts, selected_facts)
    if fact_status is not None:
        hit = fact_status.loc[fact_status["known"] & fact_status["suppressed"], "uuid"]
        groups["removed_known"] = csqa_ids(target_facts[target_facts["uuid"].isin(set(hit))]) & groups["removed"]
    train = read_questions(train_path)
    dev = read_questions(dev_path)
    train_set, eval_groups, held_out = assemble_data(
        train, dev, groups, settings.train_questions, settings.dev_questions, seeds[0], train_source=str(train_path)
    )
    log.info(
        "CSQA: %d training questions (%d linked and %d siblings held out), groups %s",
        len(train_set),
        held_out["linked"],
        held_out["siblings"],
        {g: len(v) for g, v in eval_groups.items()},
    )
    tuner = CSQAFinetuner(
        model,
        tokenizer,
        layers,
        mask_logits,
        granularity,
        mode,
        train_set,
        eval_groups,
        settings,
        seeds,
        device=device,
        checkpoint_path=checkpoint_path,
        progress=progress,
    )
    result = tuner.run()
    result["granularity"] = granularity
    result["held_out_of_training"] = held_out
    result["linked_questions"] = {
        "all": len(groups["linked"]),
        "removed": len(groups["removed"]),
        "removed_known": len(eval_groups["removed_known"]),
        "kept": len(groups["kept"]),
        "unused": len(groups["linked"] - groups["removed"] - groups["kept"]),
    }
    if fact_status is not None:
        result["facts"] = {
            "n": len(fact_status),
            "known": int(fact_status["known"].sum()),
            "suppressed": int(fact_status["suppressed"].sum()),
            "known_and_suppressed": int((fact_status["known"] & fact_status["suppressed"]).sum()),
        }
    return result


def run_stage(
    params: Params,
    *,
    model: str,
    target: str,
    seed: int,
    mode: str,
    model_dir: Path,
    mask: Path,
    triplets: Path,
    splits_dir: Path,
    verbalized: Path,
    csqa_dir: Path,
    out: Path,
) -> dict[str, Any]:
    """The finetune_csqa stage: read the model, mask, triplets table, the target's TargetKG splits,
    its verbalisations and CSQA's {train,dev}_rand_split.jsonl; finetune in `mode` for every seed of
    csqa.seeds; write the result JSON to `out` (atomically). `seed` is the mask's seed. A run resumes
    from `.<out name>.ckpt` next to `out`, which is removed once `out` is written. Returns the result."""
    settings = params.csqa
    spec = params.targets.get(target)
    if spec is None:
        raise InputError(f"params key 'targets': no target named {target!r}")
    device = pick_device(settings.device, key="csqa.device")
    start = time.monotonic()

    table, target_facts, selected = read_linked_facts(triplets, splits_dir, target, spec)
    lm, tokenizer = load_model(model_dir, "cpu")
    logits, metadata = masking.load_mask(mask)
    layers, granularity = mask_layers(lm, dict(logits), dict(metadata), str(mask))
    rows = factsets.read_verbalized(verbalized)
    facts = pd.concat([factsets.split_rows(splits_dir / f"targetkg_{s}.parquet", rows, params.known) for s in SPLITS])
    facts = facts[~facts.index.duplicated()]
    status = suppressed_facts(
        lm,
        tokenizer,
        layers,
        logits,
        granularity,
        facts,
        params.robustness.suppressed_ratio,
        settings.eval_batch_size,
        params.verbalize.scored_positions,
        device,
    )
    checkpoint_path = out.with_name(f".{out.name}.ckpt")
    result = finetune_csqa(
        lm,
        tokenizer,
        logits,
        metadata,
        table,
        target_facts,
        selected,
        csqa_dir / "train_rand_split.jsonl",
        csqa_dir / "dev_rand_split.jsonl",
        mode,
        settings,
        settings.seeds,
        device=device,
        checkpoint_path=checkpoint_path,
        mask_source=str(mask),
        fact_status=status,
    )
    result = {
        "model": model,
        "target": target,
        "seed": seed,
        **result,
        "mask": str(mask),
        "provenance": stamp(
            {
                "csqa": params.section("csqa"),
                "target": spec,
                "known": params.section("known"),
                "suppressed_ratio": params.robustness.suppressed_ratio,
            },
            device=str(device),
            wall_time_s=round(time.monotonic() - start, 3),
        ),
    }
    CsqaResult.from_dict(result, source=str(out)).write(out)
    checkpoint.discard(checkpoint_path)  # only once the result is in place
    for variant in VARIANTS:
        acc = result["accuracy"][variant]
        log.info(
            "%s: %s",
            variant,
            ", ".join(
                f"{g} {acc[g]['acc'] if acc[g]['acc'] is not None else float('nan'):.3f} (n={acc[g]['n']})" for g in acc
            ),
        )
    dod = result["diff_of_diffs"]["remaining - original"]["removed_known vs kept"]
    log.info(
        "difference of differences (removed known vs kept): %s, minimal detectable effect %s", dod["diff"], dod["mde"]
    )
    return result
