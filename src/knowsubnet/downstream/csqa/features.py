"""Head mode's cached features: in `head` mode the model is frozen, so each model version's final
hidden state at every choice's classification token is computed once per question, and the heads
of every finetuning seed train on those tensors (seconds, however many epochs).

The blocks below the mask are the same in every version: they run once per question
(`TopBlocks.prefix`), and only the masked top blocks run once per version, with the version's
weights swapped in for that call (`TopBlocks.forward(hidden, weights)`; no model copies).
Questions are batched by length, so batches carry little padding.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from knowsubnet.core.progress import progress_bar
from knowsubnet.downstream.csqa.data import N_CHOICES, Encoded
from knowsubnet.downstream.csqa.model import gather_choices, prefix_states
from knowsubnet.models.top_blocks import TopBlocks


def length_order(enc: Encoded) -> list[int]:
    """Question indices from shortest to longest packed sequence (ties in file order)."""
    return sorted(range(len(enc.ids)), key=lambda i: (int(enc.ids[i].shape[0]), i))


@torch.no_grad()
def head_features(
    top: TopBlocks,
    encodings: Mapping[str, Encoded],
    versions: Mapping[str, Mapping[str, torch.Tensor]],
    chunk: int,
    device: torch.device,
    *,
    state: dict[str, Any] | None = None,
    save: Callable[[dict[str, Any]], None] | None = None,
    save_every_s: float = 300.0,
    progress: bool = True,
) -> dict[str, dict[str, torch.Tensor]]:
    """{version: {encoding name: [N, 5, d] float32}} for each model version of `versions` ({version:
    {layer name: the masked layer's weight in that version}} (`masking.apply_mask`); {} = the
    original model).

    `state` resumes a run `save` checkpointed (it is called with the partial result at most every
    `save_every_s` seconds)."""
    hidden_size = top.head.weight.shape[1]  # the LM head is [vocab, d]
    # each version's weights in the compute dtype once, not at every batch's forward
    versions = {v: {k: w.to(top.compute_dtype) for k, w in weights.items()} for v, weights in versions.items()}
    if state is not None:
        features, done = state["features"], set(state["done"])
    else:
        features = {
            v: {name: torch.zeros(len(enc.ids), N_CHOICES, hidden_size) for name, enc in encodings.items()}
            for v in versions
        }
        done = set()
    # a question in several encodings (removed_known is part of removed) is computed once
    first: dict[str, tuple[str, int]] = {}
    for name, enc in encodings.items():
        for i, qid in enumerate(enc.qids):
            first.setdefault(qid, (name, i))
    batches = [
        (name, enc, order[start : start + chunk])
        for name, enc in encodings.items()
        for order in [[i for i in length_order(enc) if first[enc.qids[i]] == (name, i)]]
        for start in range(0, len(order), chunk)
    ]
    last_save = time.monotonic()
    for i, (name, enc, index) in enumerate(progress_bar(batches, desc="features", disable=not progress)):
        if i in done:
            continue
        batch = prefix_states(top, enc, index, device)
        kwargs = {"position_ids": batch["position_ids"], "attention_mask": batch["attention_mask"]}
        for version, weights in versions.items():
            final = top.forward(batch["prefix"], dict(weights) or None, **kwargs)
            features[version][name][index] = gather_choices(final, batch["last"].to(device)).float().cpu()
        done.add(i)
        if save is not None and time.monotonic() - last_save >= save_every_s and len(done) < len(batches):
            save({"features": features, "done": sorted(done)})
            last_save = time.monotonic()
    for name, enc in encodings.items():
        for i, qid in enumerate(enc.qids):
            if first[qid] != (name, i):
                for version in versions:
                    features[version][name][i] = features[version][first[qid][0]][first[qid][1]]
    return features
