"""Downstream CommonsenseQA (CSQA) finetuning: does the removed knowledge matter downstream?

Three versions of one model are finetuned alike (same seed, same data, same head initialisation,
same batch order) and scored on three groups of questions:

- variants: `original` (the pretrained model), `remaining` (the subnetwork's weights zero and held
  at zero through finetuning), `random` (a random subnetwork with the mask's per-matrix sizes
  removed, also held at zero);
- groups:   `removed` (CSQA questions linked to the removed target's facts), `kept` (questions
  linked to the other CSQA-linked facts: for csqa1 the csqa2 half and vice versa), `dev` (the
  CSQA dev split, or a seeded subsample of it).

Training questions are CSQA train minus every CSQA-linked question (both halves), so no evaluated
linked question is ever seen in finetuning.

Multiple choice is scored the standard way for causal LMs (as `GPT2DoubleHeadsModel` does): each
of the five "question + choice" sequences ends with the end-of-text token, the final hidden state
at that token goes through a linear choice head to one score, softmax over the five scores,
cross-entropy against the answer.

Modes (`csqa.modes`):
- `head`: only the choice head trains. The model is frozen, so the final hidden states are computed
  once per variant and the head is trained on them.
- `lora`: LoRA adapters (peft) on exactly the layers the mask covers, plus the head. The adapter's
  update is masked like the weight: W_eff = (W + s * B A) with the removed positions set to zero,
  so a removed weight stays exactly zero whatever the adapter learns.
- `full`: every weight trains except the removed ones: they are zeroed, their gradients are zeroed
  by a hook, and they are re-zeroed after every optimiser step.

In `head` and `lora` the blocks below the mask never change, so the hidden states entering the
first masked block are computed once for every question and shared by the three variants
(`training.TopBlocks`). Dropout is off in every mode (the model stays in eval mode) so the three
variants see the same deterministic forward. A run checkpoints every `checkpoint_every` steps and
after each variant, and resumes from its checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from knowsubnet.core.config import Csqa
from knowsubnet.core.errors import InputError
from knowsubnet.core.io import atomic_path, jsonl_rows
from knowsubnet.core.progress import progress_bar
from knowsubnet.method import masking

log = logging.getLogger(__name__)

N_CHOICES = 5
LABELS = "ABCDE"
MODES = ("head", "lora", "full")
VARIANTS = ("original", "remaining", "random")
GROUPS = ("removed", "kept", "dev")

# ----------------------------------------------------------------------------------------------
# reading CSQA


@dataclass(frozen=True)
class Question:
    id: str
    stem: str
    choices: tuple[str, ...]  # five answer texts, in label order A..E
    label: int  # index of the answer in `choices`


def read_questions(path: str | Path) -> list[Question]:
    """A CSQA jsonl file (the official release format); every line checked.

    Each line: {"id", "answerKey", "question": {"stem", "choices": [{"label", "text"} x 5]}}.
    """
    path = Path(path)
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for where, lineno, row in jsonl_rows(path, "a JSON object (a CSQA question)"):
        question = _parse_question(row, where)
        if question.id in seen:
            raise InputError(f"{where}: question id {question.id!r} repeats line {seen[question.id]}")
        seen[question.id] = lineno
        questions.append(question)
    if not questions:
        raise InputError(f"{path}: expected CSQA questions, got none")
    return questions


def _parse_question(row: Any, where: str) -> Question:
    what = 'a CSQA question {"id", "answerKey", "question": {"stem", "choices"}}'
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object ({what}), got {type(row).__name__}")
    for key in ("id", "answerKey", "question"):
        if key not in row:
            raise InputError(f"{where}: expected key {key!r} in {what}, got keys {sorted(map(str, row))}")
    qid, answer, body = row["id"], row["answerKey"], row["question"]
    if not isinstance(qid, str) or not qid.strip():
        raise InputError(f"{where}: expected a non-empty string 'id', got {qid!r}")
    if not isinstance(body, dict) or not isinstance(body.get("stem"), str) or not body["stem"].strip():
        raise InputError(f"{where}: expected 'question' to be an object with a non-empty 'stem'")
    choices = body.get("choices")
    if not isinstance(choices, list) or len(choices) != N_CHOICES:
        got = len(choices) if isinstance(choices, list) else type(choices).__name__
        raise InputError(f"{where}: expected {N_CHOICES} choices (labels {', '.join(LABELS)}), got {got}")
    texts = []
    for i, choice in enumerate(choices):
        if (not isinstance(choice, dict) or choice.get("label") != LABELS[i]
                or not isinstance(choice.get("text"), str) or not choice["text"].strip()):
            raise InputError(f"{where}: choice {i + 1}: expected {{\"label\": \"{LABELS[i]}\", \"text\": "
                             f"<non-empty string>}}, got {choice!r}")
        texts.append(choice["text"])
    if not isinstance(answer, str) or answer not in LABELS:
        raise InputError(f"{where}: expected 'answerKey' to be one of {', '.join(LABELS)}, got {answer!r}")
    return Question(qid.strip(), body["stem"], tuple(texts), LABELS.index(answer))


# ----------------------------------------------------------------------------------------------
# which questions go where


def _ids_of(frame) -> set[str]:
    from knowsubnet.data.splits import csqa_ids

    return csqa_ids(frame)


def question_groups(triplets, target_facts, selected_facts=None) -> dict[str, set[str]]:
    """Question ids per role, from the triplets table and a target's facts.

    - `linked`:  every question linked to a fact of the triplets table (both CSQA halves);
    - `removed`: the questions linked to `target_facts` (the TargetKG the mask removed);
    - `kept`:    `linked` minus the questions of `selected_facts` (every fact the target's selector
                 picks, before any cap; defaults to `target_facts`): for csqa1, the csqa2 half.
    Questions linked to selected facts that a cap left out of the TargetKG are in neither group
    (and never trained on).
    """
    from knowsubnet.data.triplets import CSQA_IDS

    for name, frame in (("triplets table", triplets), ("target facts", target_facts)):
        if CSQA_IDS not in frame.columns:
            raise InputError(f"{name}: no '{CSQA_IDS}' column; re-run extract_triplets and split_controls")
    linked = _ids_of(triplets)
    removed = _ids_of(target_facts)
    if not removed:
        raise InputError("target facts: no fact of the target is linked to a CSQA question; finetune_csqa "
                         "needs a CSQA-linked target (selector csqa: csqa1 | csqa2 | [question ids])")
    selected = _ids_of(selected_facts) if selected_facts is not None else removed
    return {"linked": linked, "removed": removed, "kept": linked - selected - removed}


def _subsample(items: list, n: int | None, seed: int, stream: int) -> list:
    if n is None or n >= len(items):
        return list(items)
    order = np.random.default_rng([seed, stream]).permutation(len(items))[:n]
    return [items[i] for i in sorted(order)]


def assemble_data(train: list[Question], dev: list[Question], groups: Mapping[str, set[str]],
                  n_train: int | None, n_dev: int | None, seed: int, *,
                  train_source: str = "CSQA train") -> tuple[list[Question], dict[str, list[Question]]]:
    """Training questions (train minus every linked question, subsampled) and the evaluation groups.

    A linked question id absent from CSQA train is an InputError naming it.
    """
    by_id = {q.id: q for q in train}
    for role in ("removed", "kept", "linked"):
        missing = sorted(groups[role] - set(by_id))
        if missing:
            raise InputError(f"{train_source}: question id {missing[0]!r} (linked to a fact, group {role}) is "
                             f"not in the file ({len(missing)} such ids); expected every CSQA-linked id there")
    linked = set(groups["linked"]) | set(groups["removed"]) | set(groups["kept"])
    pool = [q for q in train if q.id not in linked]
    if not pool:
        raise InputError(f"{train_source}: no question is left for training once the linked ones are removed")
    train_set = _subsample(pool, n_train, seed, 0)
    eval_groups = {
        "removed": [by_id[i] for i in sorted(groups["removed"])],
        "kept": [by_id[i] for i in sorted(groups["kept"])],
        "dev": _subsample(list(dev), n_dev, seed, 1),
    }
    for name, items in eval_groups.items():
        if not items:
            raise InputError(f"CSQA group {name!r} is empty; expected at least one question to evaluate")
    return train_set, eval_groups


# ----------------------------------------------------------------------------------------------
# encoding


def question_text(stem: str, choice: str) -> str:
    return f"Question: {stem}\nAnswer: {choice}"


@dataclass
class Encoded:
    """Token ids of the five sequences of each question (right-padded per question)."""

    ids: list[torch.Tensor]  # per question: [5, T_q] long
    last: list[torch.Tensor]  # per question: [5] index of the classification (last real) token
    labels: torch.Tensor  # [N] long
    qids: list[str]


def encode_questions(tokenizer, questions: list[Question], max_length: int) -> Encoded:
    """Each (question, choice) as "Question: ...\\nAnswer: ..." + end-of-text token, cut from the left
    to `max_length` tokens so the choice and the classification token always survive."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise InputError("tokenizer: no end-of-text token to score a choice at")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids, last = [], []
    for q in questions:
        seqs = []
        for choice in q.choices:
            tokens = tokenizer(question_text(q.stem, choice), add_special_tokens=False)["input_ids"] + [eos]
            seqs.append(tokens[-max_length:])
        width = max(map(len, seqs))
        ids.append(torch.tensor([s + [pad] * (width - len(s)) for s in seqs], dtype=torch.long))
        last.append(torch.tensor([len(s) - 1 for s in seqs], dtype=torch.long))
    labels = torch.tensor([q.label for q in questions], dtype=torch.long)
    return Encoded(ids, last, labels, [q.id for q in questions])


def _pad_stack(parts: list[torch.Tensor], value: float = 0) -> torch.Tensor:
    """[5, T_i, ...] tensors -> [sum 5, max T, ...], right-padded."""
    width = max(p.shape[1] for p in parts)
    out = []
    for p in parts:
        if p.shape[1] < width:
            pad = [0, 0] * (p.dim() - 2) + [0, width - p.shape[1]]
            p = F.pad(p, pad, value=value)
        out.append(p)
    return torch.cat(out, dim=0)


# ----------------------------------------------------------------------------------------------
# the model: choice head, masked layers, LoRA with a masked update


class ChoiceHead(nn.Module):
    """One score per (question, choice) from the final hidden state at its classification token."""

    def __init__(self, hidden: int, generator: torch.Generator):
        super().__init__()
        self.linear = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(self.linear.weight.shape, generator=generator) * 0.02)
            self.linear.bias.zero_()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features.float()).squeeze(-1)


def removed_weight_masks(layers: list[masking.MaskableLayer], masks: Mapping[str, torch.Tensor] | None,
                         granularity: str) -> dict[str, torch.Tensor]:
    """{layer name: bool tensor shaped like its weight, True where the weight is removed}."""
    if masks is None:
        return {}
    return {layer.name: masking.expand_to_weight(masks[layer.name].bool().cpu(), layer, granularity).contiguous()
            for layer in layers}


def _masked_lora_forward(module: nn.Module, removed: torch.Tensor | None, transposed: bool):
    """A forward for an injected peft LoRA layer computing x W_eff with W_eff = W + delta, zero at
    removed positions (the adapter's update masked like the weight)."""

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        weight = lora_effective_weight(module, removed)
        bias = module.base_layer.bias
        if transposed:  # GPT-2 Conv1D: weight [in, out]
            out = x.reshape(-1, x.shape[-1]) @ weight
            if bias is not None:
                out = out + bias
            return out.reshape(*x.shape[:-1], weight.shape[1])
        return F.linear(x, weight, bias)

    return forward


def lora_effective_weight(module: nn.Module, removed: torch.Tensor | None) -> torch.Tensor:
    """W + delta(B, A) of an injected LoRA layer, with the removed positions exactly zero."""
    adapter = module.active_adapters[0]
    weight = module.base_layer.weight + module.get_delta_weight(adapter)
    if removed is not None:
        weight = weight.masked_fill(removed.to(weight.device), 0.0)
    return weight


def _get_module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def effective_weights(model: nn.Module, layer_names: list[str], removed: Mapping[str, torch.Tensor],
                      mode: str) -> dict[str, torch.Tensor]:
    """What each masked layer's forward multiplies by now (detached), keyed by layer name."""
    out = {}
    with torch.no_grad():
        for name in layer_names:
            module = _get_module(model, name)
            if mode == "lora":
                out[name] = lora_effective_weight(module, removed.get(name)).detach().clone()
            else:
                out[name] = module.weight.detach().clone()
    return out


# ----------------------------------------------------------------------------------------------
# statistics


def bootstrap_ci(correct: np.ndarray, samples: int, seed: int, stream: int) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of 0/1 `correct`."""
    rng = np.random.default_rng([seed, 1000 + stream])
    idx = rng.integers(0, len(correct), size=(samples, len(correct)))
    means = correct[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_delta(a: np.ndarray, b: np.ndarray, samples: int, seed: int, stream: int) -> dict[str, float]:
    """mean(a) - mean(b) on the same questions, with a paired 95 % bootstrap interval."""
    rng = np.random.default_rng([seed, 2000 + stream])
    idx = rng.integers(0, len(a), size=(samples, len(a)))
    diffs = a[idx].mean(axis=1) - b[idx].mean(axis=1)
    return {"diff": float(a.mean() - b.mean()), "ci95": [float(np.percentile(diffs, 2.5)),
                                                        float(np.percentile(diffs, 97.5))], "n": int(len(a))}


# ----------------------------------------------------------------------------------------------
# the finetuner


class _Variant:
    """One model version being finetuned in one mode: its copy of the model, head, optimiser."""

    def __init__(self, base: nn.Module, layer_names: list[str], transposed: dict[str, bool],
                 removed: dict[str, torch.Tensor], mode: str, settings: Csqa, seed: int,
                 device: torch.device, first_block: int):
        from knowsubnet.method.training import TopBlocks

        self.mode, self.layer_names, self.device = mode, layer_names, device
        self.removed = {name: mask.to(device) for name, mask in removed.items()}  # moved once, not per forward
        removed = self.removed
        self.model = copy.deepcopy(base).to(device)
        self.model.eval()  # dropout off: every variant sees the same deterministic forward
        self.model.requires_grad_(False)
        with torch.no_grad():
            for name in layer_names:
                if name in removed:
                    _get_module(self.model, name).weight.masked_fill_(removed[name].to(device), 0.0)
        generator = torch.Generator().manual_seed(seed)
        hidden = self.model.config.hidden_size if hasattr(self.model.config, "hidden_size") else \
            self.model.get_input_embeddings().weight.shape[1]
        self.head = ChoiceHead(hidden, generator).to(device)
        params = list(self.head.parameters())
        self._hooks = []
        if mode == "lora":
            params += self._inject_lora(layer_names, transposed, settings.lora, seed)
        elif mode == "full":
            for name, p in self.model.named_parameters():
                p.requires_grad_(True)
            for name in layer_names:
                if name in removed:
                    weight = _get_module(self.model, name).weight
                    keep = removed[name].to(device)
                    self._hooks.append(weight.register_hook(lambda g, keep=keep: g.masked_fill(keep, 0.0)))
            params += [p for p in self.model.parameters()]
        self.params = params
        self.optimizer = torch.optim.AdamW(params, lr=settings.lr[mode], weight_decay=settings.weight_decay)
        self.top = TopBlocks(self.model, first_block) if mode != "full" else None

    def _inject_lora(self, layer_names, transposed, lora_settings, seed) -> list[torch.Tensor]:
        from peft import LoraConfig, inject_adapter_in_model

        config = LoraConfig(r=int(lora_settings["r"]), lora_alpha=float(lora_settings["alpha"]), lora_dropout=0.0,
                            target_modules=list(layer_names), bias="none",
                            fan_in_fan_out=any(transposed.values()))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # peft initialises lora_A from the global generator
            with _quiet_peft():
                inject_adapter_in_model(config, self.model)
        params = []
        for name in layer_names:
            module = _get_module(self.model, name)
            if not hasattr(module, "get_delta_weight"):
                raise RuntimeError(f"peft did not wrap {name}")
            module.forward = _masked_lora_forward(module, self.removed.get(name), transposed[name])
            for pname, p in module.named_parameters():
                if "lora_" in pname:
                    p.requires_grad_(True)
                    params.append(p)
        return params

    def state(self) -> dict[str, torch.Tensor]:
        """The trainable tensors (head + adapters, or every weight in full mode)."""
        out = {f"head.{k}": v.detach().cpu().clone() for k, v in self.head.state_dict().items()}
        if self.mode == "lora":
            out.update({f"model.{k}": v.detach().cpu().clone() for k, v in self.model.state_dict().items()
                        if "lora_" in k})
        elif self.mode == "full":
            out.update({f"model.{k}": v.detach().cpu().clone() for k, v in self.model.state_dict().items()})
        return out

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        model_part = {k[6:]: v for k, v in state.items() if k.startswith("model.")}
        if model_part:
            self.model.load_state_dict(model_part, strict=False)

    def rezero(self) -> None:
        if self.mode != "full":
            return
        with torch.no_grad():
            for name in self.layer_names:
                if name in self.removed:
                    _get_module(self.model, name).weight.masked_fill_(self.removed[name].to(self.device), 0.0)

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Final hidden state at each sequence's classification token: [B*5, d]."""
        if self.top is not None:
            hidden = self.top.forward(batch["prefix"].to(self.device))
        else:
            hidden = self.model.base_model(input_ids=batch["ids"].to(self.device), use_cache=False).last_hidden_state
        last = batch["last"].to(self.device)
        return hidden[torch.arange(hidden.shape[0], device=self.device), last]

    def close(self) -> None:
        for handle in self._hooks:
            handle.remove()


@contextlib.contextmanager
def _quiet_peft():
    # peft warns that GPT-2's Conv1D needs fan_in_fan_out; it is set from the layers found.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


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
        from knowsubnet.models.prepare import context_length

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
            from knowsubnet.method.training import TopBlocks

            top = TopBlocks(self.model, self.first_block)
            self.model.to(self.device)
            out = {}
            for name, enc in [("train", self.train_enc)] + list(self.group_enc.items()):
                parts: list[torch.Tensor] = []
                chunk = self.settings.eval_batch_size
                for start in progress_bar(range(0, len(enc.ids), chunk), desc=f"prefix/{name}", leave=False,
                                          disable=not self.progress):
                    ids = enc.ids[start:start + chunk]
                    hidden = top.prefix(_pad_stack(ids, 0).to(self.device)).cpu()
                    for i, q in enumerate(ids):
                        parts.append(hidden[i * N_CHOICES:(i + 1) * N_CHOICES, :q.shape[1]].clone())
                out[name] = parts
            self._prefix = out
        return self._prefix

    def _batch(self, which: str, index: Iterable[int]) -> dict[str, torch.Tensor]:
        enc = self.train_enc if which == "train" else self.group_enc[which]
        index = list(index)
        batch = {"last": torch.cat([enc.last[i] for i in index]), "labels": enc.labels[index]}
        if self.mode == "full":
            pad = 0
            batch["ids"] = _pad_stack([enc.ids[i] for i in index], pad)
        else:
            prefix = self._prefixes()[which]
            batch["prefix"] = _pad_stack([prefix[i] for i in index], 0.0)
        return batch

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 7, epoch]).permutation(len(self.train_enc.ids))

    def _step_index(self, step: int) -> np.ndarray:
        bs = self.settings.batch_size
        epoch, within = divmod(step, self.steps_per_epoch)
        return self._order(epoch)[within * bs:(within + 1) * bs]

    # -- features (head mode: the frozen model's features once per variant) --------------------

    @torch.no_grad()
    def _all_features(self, variant: _Variant) -> dict[str, torch.Tensor]:
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

    def _scores(self, variant: _Variant, which: str, index, features) -> torch.Tensor:
        if features is not None:
            return variant.head(features[which][torch.as_tensor(list(index))].to(self.device))
        batch = self._batch(which, index)
        return variant.head(variant.features(batch)).view(-1, N_CHOICES)

    @torch.no_grad()
    def _evaluate(self, variant: _Variant, features) -> dict[str, np.ndarray]:
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
        if self.checkpoint_path is None:
            return
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save({"fingerprint": self.fingerprint(), "done": done, "current": current}, tmp)

    def _load(self) -> tuple[dict, dict | None]:
        if self.checkpoint_path is None or not self.checkpoint_path.is_file():
            return {}, None
        try:
            state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
            raise InputError(f"{self.checkpoint_path}: unreadable finetuning checkpoint ({err}); delete it to "
                             f"start over") from None
        if state.get("fingerprint") != self.fingerprint():
            raise InputError(f"{self.checkpoint_path}: checkpoint was written by a different configuration "
                             f"(params, seed, data or mask); delete it to start over")
        log.info("resuming from %s (%d variants done)", self.checkpoint_path, len(state["done"]))
        return state["done"], state["current"]

    def _run_variant(self, name: str, done: dict, current: dict | None) -> dict[str, Any]:
        settings = self.settings
        started = time.perf_counter()
        variant = _Variant(self.model, self.layer_names, self.transposed, self.removed[name], self.mode, settings,
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
        weights = effective_weights(variant.model, self.layer_names, self.removed[name], self.mode)
        max_removed = max((float(weights[n][self.removed[name][n].to(weights[n].device)].abs().max())
                           if bool(self.removed[name][n].any()) else 0.0) for n in self.layer_names) \
            if self.removed[name] else None
        variant.close()
        result = {
            "groups": {},
            "curve": curve,
            "steps": step,
            "trainable_parameters": int(sum(p.numel() for p in variant.params)),
            "max_abs_removed_weight": max_removed,
            "wall_time_s": round(elapsed + time.perf_counter() - started, 3),
            "correct": {g: "".join("1" if c else "0" for c in v) for g, v in correct.items()},
        }
        for i, group in enumerate(GROUPS):
            values = correct[group]
            lo, hi = bootstrap_ci(values, settings.bootstrap, self.seed, i)
            result["groups"][group] = {"acc": float(values.mean()), "ci95": [lo, hi], "n": int(len(values))}
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
        delta = {}
        for v in ("remaining", "random"):
            delta[v] = {g: paired_delta(correct[v][g], correct["original"][g], self.settings.bootstrap, self.seed,
                                        i) for i, g in enumerate(GROUPS)}
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
            "delta_vs_original": delta,
            "per_question_correct": {v: done[v]["correct"] for v in VARIANTS},
        }

    def discard_checkpoint(self) -> None:
        if self.checkpoint_path is not None:
            self.checkpoint_path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# the stage's entry point


def finetune_csqa(model: nn.Module, tokenizer, mask_logits: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
                  triplets, target_facts, selected_facts, train_path: str | Path, dev_path: str | Path,
                  mode: str, settings: Csqa, seed: int, device: str | torch.device = "cpu",
                  checkpoint_path: str | Path | None = None, progress: bool = True,
                  mask_source: str = "mask") -> dict[str, Any]:
    """Everything `finetune_csqa` computes for one (model, target, seed, mode): see the module doc."""
    from knowsubnet.evaluation.ablation import mask_layers

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
