"""Reading a fact's knowledge from the hidden states, not only from the next-token output.

A removal that only hides knowledge from the output pathway can leave it readable inside the
model; the unlearning literature recovers "removed" facts with a logit lens or a linear probe.
Two readouts here, pure functions of a model and encoded facts (no files), for the robustness
stage to compare the original, remaining and random-removed models:

- `logit_lens`: the hidden state after each masked block, through the model's final norm and LM
  head, scored as the tail's mean cross-entropy (the positions `scoring` scores). The blocks below
  the mask are identical in every variant, so this runs the top blocks only (`CachedFacts`) and
  captures each block's output with a forward hook. After the last block it is the ordinary score.
- `fit_choice_probe` / `ChoiceProbe`: a linear multiple-choice probe over the same candidate
  tails as the ranking probe (`probes.choices`). Features are the final hidden state (after the
  final norm) where the first tail token is predicted (`choice_features`); a candidate is the mean
  input embedding of its tail's tokens (`candidate_embeddings`). Fit on train facts, scored on
  held-out facts: with an entity-disjoint split the held-out tails are never seen in training, so
  the probe must score a candidate through its embedding, not memorise a class per tail.

Both read whatever weights the model holds (write an edit in with `edits.applied`), or take
`weights` as `TopBlocks.forward` does (needed when the top blocks compute in bf16, whose frozen
copies are a snapshot).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from knowsubnet.core.errors import InputError
from knowsubnet.data.encoding import IGNORE, tokenize_facts
from knowsubnet.models.top_blocks import TopBlocks
from knowsubnet.scoring.cached import CachedFacts

# The module after the last block, by `config.model_type`: an attribute of the base model.
FINAL_NORMS = {"gpt2": "ln_f", "llama": "norm"}

BATCH = 64  # facts per forward of the top blocks
PROBE_FORMS = ("diagonal", "full")
PROBE_FORM = "diagonal"  # d + d parameters: well determined by a few hundred train facts
PROBE_L2 = 1e-2  # on the scaled features (unit RMS): keeps the held-out scores from overfitting
PROBE_MAX_ITER = 500  # LBFGS iterations (full batch; the objective is convex)


def final_norm(model: nn.Module) -> nn.Module:
    """The norm the model applies between its last block and the LM head."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in FINAL_NORMS:
        raise InputError(
            f"{type(model).__name__} (model_type {model_type!r}): no known final norm for the logit "
            f"lens; expected one of {', '.join(FINAL_NORMS)}"
        )
    return getattr(model.base_model, FINAL_NORMS[model_type])


# -- logit lens -----------------------------------------------------------------------------------


def block_outputs(
    top: TopBlocks, hidden: torch.Tensor, weights: dict[str, torch.Tensor] | None = None
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """`top.forward(hidden, weights)` (the final hidden states) and the output of every block it ran,
    {block index: [B, T, d]}, captured by forward hooks."""
    captured: dict[int, torch.Tensor] = {}

    def capture(index: int):
        def hook(module, args, output):
            captured[index] = output[0] if isinstance(output, tuple) else output

        return hook

    handles = [top.blocks[i].register_forward_hook(capture(i)) for i in range(top.first, len(top.blocks))]
    try:
        final = top.forward(hidden, weights)
    finally:
        for handle in handles:
            handle.remove()
    return final, captured


@torch.no_grad()
def logit_lens(
    facts: CachedFacts, weights: dict[str, torch.Tensor] | None = None, batch: int = BATCH
) -> dict[int, torch.Tensor]:
    """{block index: per-fact mean tail cross-entropy, float64 [N] on the CPU} with the hidden state
    after that block read through the final norm and the LM head, for every block from the first
    masked one to the last (whose lens is `facts.nll()`)."""
    top = facts.top
    norm = final_norm(top.model)
    blocks = range(top.first, len(top.blocks))
    out = {block: torch.zeros(len(facts), dtype=torch.float64) for block in blocks}
    order = torch.sort(facts.facts.lengths, stable=True).indices  # similar lengths together, as `nll`
    for start in range(0, len(facts), batch):
        index = order[start : start + batch]
        targets = facts.targets[index]
        width = int(targets.ne(IGNORE).nonzero()[:, 1].max()) + 1
        where = targets[:, :width] != IGNORE
        rows, gold = where.nonzero()[:, 0], targets[:, :width][where]
        counts = torch.bincount(rows, minlength=len(index)).double()
        _, outputs = block_outputs(top, facts.hidden[index, :width], weights)
        for block in blocks:
            with top.autocast():
                normed = norm(outputs[block][where])
            ce = F.cross_entropy(top.logits(normed).float(), gold, reduction="none").double()
            sums = torch.zeros(len(index), dtype=torch.float64, device=ce.device).index_add_(0, rows, ce)
            out[block][index] = (sums / counts.to(ce.device)).cpu()
    return out


# -- multiple-choice probe: inputs ----------------------------------------------------------------


@torch.no_grad()
def choice_features(
    facts: CachedFacts, weights: dict[str, torch.Tensor] | None = None, batch: int = BATCH
) -> torch.Tensor:
    """The final hidden state (after the final norm) at each fact's first scored position, float32
    [N, d] on the CPU. With the default `all_tail_tokens` encoding that position predicts the first
    tail token; the prompt is the same for every candidate, so one feature serves all of them."""
    top = facts.top
    out = None
    for start in range(0, len(facts), batch):
        index = torch.arange(start, min(start + batch, len(facts)))
        targets = facts.targets[index]
        scored = targets != IGNORE
        first = scored.int().argmax(dim=1)  # the first True of each row
        width = int(scored.nonzero()[:, 1].max()) + 1
        final = top.forward(facts.hidden[index, :width], weights)
        picked = final[torch.arange(len(index), device=final.device), first.to(final.device)].float().cpu()
        if out is None:
            out = torch.zeros(len(facts), picked.shape[-1], dtype=torch.float32)
        out[index] = picked
    if out is None:
        raise InputError("no facts to read choice-probe features from")
    return out


@torch.no_grad()
def candidate_embeddings(
    model: nn.Module, tokenizer, prompts: Sequence[str], candidates: Sequence[Sequence[str]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each candidate tail as the mean of the model's input embeddings over its tokens: float32
    [N, K, d] on the CPU (K the most candidates of any fact; padding rows are zero) and which are
    real, bool [N, K]. The tail's tokens are those it has after the fact's prompt
    (`tokenize_facts`), so a SentencePiece tokenizer adds no stray word-boundary token."""
    if len(prompts) != len(candidates):
        raise ValueError(f"{len(prompts)} prompts but {len(candidates)} candidate lists")
    table = model.get_input_embeddings().weight.detach()
    width = max((len(c) for c in candidates), default=0)
    pairs = tokenize_facts(
        tokenizer,
        [p for p, cands in zip(prompts, candidates) for _ in cands],
        [t for cands in candidates for t in cands],
    )
    out = torch.zeros(len(prompts), width, table.shape[1], dtype=torch.float32)
    valid = torch.zeros(len(prompts), width, dtype=torch.bool)
    flat = iter(pairs)
    for i, cands in enumerate(candidates):
        for k in range(len(cands)):
            _, tail = next(flat)
            out[i, k] = table[torch.tensor(tail, device=table.device)].float().mean(dim=0).cpu()
            valid[i, k] = True
    return out, valid


def choice_sets(frame: pd.DataFrame) -> tuple[list[str], list[str], list[list[str]], torch.Tensor]:
    """A `probes.choices` frame (one row per candidate) as the probe's inputs, one entry per fact in
    order of first appearance: uuids, prompts, candidate tails, index of the true one [N]."""
    uuids, prompts, candidates, true_index = [], [], [], []
    for uuid, group in frame.groupby("uuid", sort=False):
        if int(group["is_true"].sum()) != 1:
            raise InputError(f"choice probe: fact {uuid} has {int(group['is_true'].sum())} true candidates, expected 1")
        uuids.append(str(uuid))
        prompts.append(str(group["prompt"].iloc[0]))
        candidates.append([str(t) for t in group["tail_text"]])
        true_index.append(int(group["is_true"].to_numpy().argmax()))
    return uuids, prompts, candidates, torch.tensor(true_index, dtype=torch.long)


# -- multiple-choice probe: fit and score ---------------------------------------------------------


def _rms(x: torch.Tensor) -> float:
    value = float(x.double().pow(2).mean().sqrt())
    return value if value > 0 else 1.0


@dataclass
class ChoiceProbe:
    """s(fact, candidate) = h' A e + b . e on scaled features: h = features / h_scale, e = the candidate's
    embedding / e_scale; A is diag(a) ("diagonal") or a full matrix ("full"). b . e is a prior over
    tails that ignores the fact: fit on zero features to measure what it alone gets right."""

    form: str
    a: torch.Tensor  # float64: [d] (diagonal) or [d, d] (full)
    b: torch.Tensor  # float64 [d]
    h_scale: float  # RMS of the train features
    e_scale: float  # RMS of the train candidates' embeddings
    l2: float
    loss: float  # the fitted objective (mean cross-entropy + L2)

    def scores(
        self, features: torch.Tensor, candidates: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[N, K] float64; padding candidates (valid False) score -inf."""
        h = features.double() / self.h_scale
        e = candidates.double() / self.e_scale
        if self.form == "diagonal":
            bilinear = torch.einsum("nd,d,nkd->nk", h, self.a, e)
        else:
            bilinear = torch.einsum("nd,de,nke->nk", h, self.a, e)
        out = bilinear + e @ self.b
        return out if valid is None else out.masked_fill(~valid, float("-inf"))

    def accuracy(
        self,
        features: torch.Tensor,
        candidates: torch.Tensor,
        true_index: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per fact, 1.0 when the true candidate scores strictly above every other one, else 0.0
        (float64 [N]; its mean is the top-1 accuracy). Strict, as `robustness.top1`:
        `probes.choices` puts the true tail first, so a tie must not count as a hit."""
        s = self.scores(features, candidates, valid)
        index = true_index.long().view(-1, 1)
        true = s.gather(1, index).squeeze(1)
        others = s.scatter(1, index, float("-inf")).amax(dim=1)
        return (true > others).double()


def fit_choice_probe(
    features: torch.Tensor,
    candidates: torch.Tensor,
    true_index: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    l2: float = PROBE_L2,
    form: str = PROBE_FORM,
    max_iter: int = PROBE_MAX_ITER,
) -> ChoiceProbe:
    """Fit the probe by softmax cross-entropy over each fact's candidates plus l2 * |params|^2.

    The objective is convex in (A, b) and is minimised from zero by full-batch LBFGS in float64,
    so there is nothing random to seed: a CPU fit is the same every time. Features and embeddings
    are scaled to unit RMS on these train facts, so one `l2` means the same for every model."""
    if form not in PROBE_FORMS:
        raise ValueError(f"probe form {form!r}: expected one of {', '.join(PROBE_FORMS)}")
    if len(features) == 0:
        raise InputError("choice probe: no train facts to fit on")
    d = features.shape[1]
    real = candidates if valid is None else candidates[valid]
    h_scale, e_scale = _rms(features), _rms(real)
    a = torch.zeros((d,) if form == "diagonal" else (d, d), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(d, dtype=torch.float64, requires_grad=True)
    probe = ChoiceProbe(form, a, b, h_scale, e_scale, float(l2), float("nan"))
    true_index = true_index.long()
    optimizer = torch.optim.LBFGS(
        [a, b],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def loss() -> torch.Tensor:
        return F.cross_entropy(probe.scores(features, candidates, valid), true_index) + l2 * (
            a.pow(2).sum() + b.pow(2).sum()
        )

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        value = loss()
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(objective)
    with torch.no_grad():
        final = float(loss())
    return ChoiceProbe(form, a.detach(), b.detach(), h_scale, e_scale, float(l2), final)
