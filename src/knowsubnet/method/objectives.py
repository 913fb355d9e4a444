"""The four losses of mask discovery, as pure functions of logits, and their schedules.

Notation: p_rem is the remaining model's next-token distribution (subnetwork removed), p_orig the
original model's, V the vocabulary size. Every loss is a mean over the positions it is given:
the tail-token positions of KG facts, or every position of ControlLM blocks.

    suppress   = mean_pos KL(U || p_rem)      = mean_pos [ -log V - (1/V) sum_v log p_rem(v) ]
    controlkg  = mean_pos KL(p_orig || p_rem) = mean_pos sum_v p_orig(v) [log p_orig(v) - log p_rem(v)]
    controllm  = the same KL, at every token of the ControlLM blocks
    sparsity   = expected subnetwork density = mean_entries sigmoid(mask logit)
                 (hard-concrete: mean P(z != 0), the L0 expectation)
    npo        = mean_pos (2 / beta) softplus(beta (log p_rem(y) - log p_orig(y)))   (`train.suppress_objective:
                 npo`, in suppress's place): NPO's loss (Zhang et al. 2024) on the tail token y itself, where
                 suppress flattens the whole next-token distribution
    hidden     = mean_pos cos(d_rem, d_orig)^2 (optional, `train.lambda_hidden`): d is what the masked
                 blocks up to block `train.hidden_layer` add to the residual stream, at every prompt
                 position of a TargetKG fact (its words, up to the one that predicts the tail)

    total = lambda_s * suppress + lambda_ckg * controlkg + lambda_clm * controllm + w(t) * sparsity
            [+ lambda_h * hidden]

Why the hidden-state term reads the masked blocks' contribution, and not the hidden state: the
residual stream entering the first masked block is out of the mask's reach, and a few outlier
dimensions dominate its norm; the contribution is what removing weights can change. cos^2 is zero
when that contribution has no component along the original's (removed, or orthogonal), so the term
asks for the representation of the fact's words to lose what the masked blocks wrote there, in
every wording those words appear in, rather than for one next token of the trained wordings.

Logits should only be computed where a loss needs them: `tail_hidden` picks the final hidden
states at tail positions so the LM head runs on those rows only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def tail_positions(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) indices of the tail-token positions (targets != -100), row-major order."""
    return torch.nonzero(targets != -100, as_tuple=True)


def tail_hidden(hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Final hidden states [B, T, d] at the tail positions of `targets` [B, T] -> [P, d]."""
    rows, cols = tail_positions(targets)
    return hidden[rows, cols]


def prompt_positions(targets: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: the positions of each fact's prompt, from its first token to the one that predicts
    its first tail token (the first position where targets != -100)."""
    is_tail = targets != -100
    first_tail = torch.argmax(is_tail.int(), dim=1, keepdim=True)  # the first True of each row
    positions = torch.arange(targets.shape[1], device=targets.device).expand_as(targets)
    return positions <= first_tail


def hidden_loss(contribution: torch.Tensor, original: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean over positions of cos(contribution, original)^2; both [P, d]. Zero when every position's
    contribution is orthogonal to the original's, or gone (norm below eps: cos taken as 0)."""
    cos = F.cosine_similarity(contribution.float(), original.float(), dim=-1, eps=eps)
    return (cos * cos).mean()


def suppress_loss(logits: torch.Tensor) -> torch.Tensor:
    """KL(uniform || softmax(logits)), averaged over positions. logits: [..., V].

    KL(U || p) = sum_v (1/V) (log(1/V) - log p(v)) = -log V - mean_v log p(v)
               = -log V - mean_v z_v + logsumexp(z);  zero iff p is uniform.
    """
    z = logits.float()
    return (torch.logsumexp(z, dim=-1) - z.mean(dim=-1)).mean() - math.log(z.shape[-1])


def npo_loss(logits: torch.Tensor, tokens: torch.Tensor, ref_logprob: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO at tail positions: mean (2 / beta) softplus(beta (log p_rem(y) - log p_orig(y))). logits [P, V],
    tokens [P] (the tail tokens y), ref_logprob [P] (the original's log p(y)). (2 / beta) log 2 where the
    removal changed nothing; it falls towards 0, and its gradient with it, as y's probability falls below
    the original's: unlike a log-likelihood ascent it stops pushing a token already gone. Per tail token, where
    the NPO baseline (`method.unlearning.npo_forget`) takes each fact's summed log-probability, as NPO's paper
    does for a sequence: the mask's other losses are per tail position too."""
    return (2.0 / beta) * F.softplus(beta * (token_logprobs(logits, tokens) - ref_logprob.float())).mean()


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) at each position, in fp32: logits [P, V], tokens [P] -> [P]."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[:, None]).squeeze(-1)


# The tail token's logit out of the softmax for `other_tails_*`: exp(-1e4) is 0 in fp32, and unlike -inf it
# keeps 0 * (log p - log q) at 0 in the KL.
WITHOUT_TOKEN = -1.0e4


def other_tails_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(v | v != token) at each position, fp32: the distribution over every other continuation."""
    return torch.log_softmax(logits.float().scatter(-1, tokens[:, None], WITHOUT_TOKEN), dim=-1)


def other_tails_loss(logits: torch.Tensor, tokens: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Keep the fact's alternatives: KL(p_orig(. | not the tail token) || p_rem(. | not the tail token)) at
    TargetKG tail positions (ref_logprobs: `other_tails_logprobs` of the original). The tail token itself is
    free to fall; the others keep their relative odds, so a wrong tail's sentence stays where it was and the
    removal is of the fact, not of every tail word in its context."""
    return maintain_loss(logits.float().scatter(-1, tokens[:, None], WITHOUT_TOKEN), ref_logprobs)


class _KLFromLogits(torch.autograd.Function):
    """mean_pos KL(p || softmax(z)) = mean_pos sum_v p (log p - log_softmax(z)), in fp32 whatever z's dtype.

    The gradient is (softmax(z) - p) / n_pos, computed in the buffer of log_softmax(z): a ControlLM
    batch has positions x vocabulary entries (10 x 512 x 50k for the paper), and on a CPU each full
    pass over them costs about as much as a masked block's matrix products, so every pass counts.
    """

    @staticmethod
    def forward(ctx, logits, ref_logprobs):
        log_q = torch.log_softmax(logits, dim=-1, dtype=torch.float32)  # upcasts bf16 without a copy pass
        p = ref_logprobs.exp()
        kl = torch.linalg.vecdot(p, ref_logprobs) - torch.linalg.vecdot(p, log_q)
        ctx.save_for_backward(log_q, p)
        ctx.logits_dtype = logits.dtype
        return kl.mean()

    @staticmethod
    def backward(ctx, grad_out):
        log_q, p = ctx.saved_tensors
        grad = log_q.exp_().sub_(p).mul_(grad_out / log_q.shape[0])
        return grad.to(ctx.logits_dtype), None


def maintain_loss(logits: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(p_orig || softmax(logits)), averaged over positions.

    ref_logprobs: the original model's log-probabilities at the same positions ([..., V], any
    float dtype; upcast here). KL(p || q) = sum_v p(v) (log p(v) - log q(v)).
    """
    vocab = logits.shape[-1]
    return _KLFromLogits.apply(logits.reshape(-1, vocab), ref_logprobs.float().reshape(-1, vocab))


def controlkg_loss(logits: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Maintain ControlKG: KL(p_orig || p_rem) at the tail positions of ControlKG facts."""
    return maintain_loss(logits, ref_logprobs)


def controllm_loss(logits: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Maintain ControlLM: KL(p_orig || p_rem) at every position of the ControlLM blocks."""
    return maintain_loss(logits, ref_logprobs)


def ramp(step: int, total_steps: int, start: float, end: float, ramp_from: float) -> float:
    """A scheduled value at `step` (1-based): `start` until the fraction `ramp_from` of the run, then
    linear to `end` at the last step. The sparsity weight (paper: 2 for the first half, up to 3) and
    the mask noise's scale follow it."""
    progress = step / max(total_steps, 1)
    if progress <= ramp_from or ramp_from >= 1.0:
        return float(start)
    return float(start + (end - start) * (progress - ramp_from) / (1.0 - ramp_from))


def learning_rate(step: int, total_steps: int, lr: float, warmup_frac: float) -> float:
    """Linear warm-up from lr / warmup_steps to `lr` over the first `warmup_frac` of the steps
    (1-based `step`), then constant."""
    warmup = math.ceil(warmup_frac * total_steps)
    if warmup <= 0 or step >= warmup:
        return float(lr)
    return float(lr) * step / warmup
