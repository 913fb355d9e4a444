"""Each loss against a hand computation on a toy case."""

import math

import pytest
import torch

from knowsubnet.method import objectives


def test_suppress_loss_hand_computed():
    p = torch.tensor([[0.5, 0.25, 0.25], [0.7, 0.2, 0.1]])
    logits = p.log() + 3.0  # softmax is shift invariant
    by_hand = [sum((1 / 3) * (math.log(1 / 3) - math.log(q)) for q in row) for row in p.tolist()]
    assert math.isclose(objectives.suppress_loss(logits).item(), sum(by_hand) / 2, rel_tol=1e-5)
    assert abs(objectives.suppress_loss(torch.zeros(4, 10)).item()) < 1e-6  # uniform: zero


def test_maintain_losses_hand_computed():
    p_orig = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    p_rem = torch.tensor([[0.9, 0.1], [0.9, 0.1]])
    by_hand = (0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)) / 2  # second row: KL = 0
    for loss in (objectives.controlkg_loss, objectives.controllm_loss, objectives.maintain_loss):
        assert math.isclose(loss(p_rem.log() - 1.0, p_orig.log()).item(), by_hand, rel_tol=1e-5)
    # ControlLM over [B, T, V]: the mean over every position
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    ref = torch.log_softmax(torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(1)), -1)
    q = torch.log_softmax(logits, -1)
    expected = (ref.exp() * (ref - q)).sum(-1).mean()
    torch.testing.assert_close(objectives.controllm_loss(logits, ref), expected)
    assert abs(objectives.controllm_loss(ref, ref).item()) < 1e-6
    # an fp16 reference is upcast
    torch.testing.assert_close(objectives.controllm_loss(logits, ref.half()), expected, atol=1e-3, rtol=1e-3)


def test_schedules():
    def w(t):
        return objectives.ramp(t, 100, 2.0, 3.0, 0.5)

    assert w(1) == 2.0 and w(50) == 2.0
    assert math.isclose(w(75), 2.5) and math.isclose(w(100), 3.0)
    assert objectives.ramp(10, 100, 2.0, 3.0, 1.0) == 2.0

    def lr(t):
        return objectives.learning_rate(t, 100, 0.2, 0.1)

    assert math.isclose(lr(1), 0.02) and math.isclose(lr(5), 0.1) and lr(10) == 0.2 and lr(100) == 0.2
    assert objectives.learning_rate(1, 100, 0.2, 0.0) == 0.2


def test_tail_hidden_gathers_tail_positions_in_row_major_order():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    targets = torch.tensor([[-100, 7, 8, -100], [-100, -100, 9, -100]])
    assert objectives.tail_hidden(hidden, targets).flatten().tolist() == [1.0, 2.0, 6.0]


def test_maintain_loss_gradient_matches_autograd_kl():
    logits = torch.randn(6, 11, generator=torch.Generator().manual_seed(0), requires_grad=True)
    ref = torch.log_softmax(torch.randn(6, 11, generator=torch.Generator().manual_seed(1)), -1)
    (objectives.maintain_loss(logits, ref) * 3.0).backward()
    fused = logits.grad.clone()
    logits.grad = None
    expected = torch.nn.functional.kl_div(torch.log_softmax(logits, -1), ref, log_target=True, reduction="sum") / 6
    (expected * 3.0).backward()
    torch.testing.assert_close(fused, logits.grad)
    torch.testing.assert_close(objectives.maintain_loss(logits, ref), expected)
    # suppress: gradient of KL(U || softmax) is softmax - 1/V per position, over the positions
    z = torch.randn(4, 7, generator=torch.Generator().manual_seed(2), requires_grad=True)
    objectives.suppress_loss(z).backward()
    torch.testing.assert_close(z.grad, (torch.softmax(z, -1) - 1 / 7).detach() / 4)


def test_prompt_positions_run_to_the_one_that_predicts_the_first_tail_token():
    targets = torch.tensor([[-100, -100, 7, 8, -100], [-100, 5, -100, -100, -100]])
    assert objectives.prompt_positions(targets).tolist() == [
        [True, True, True, False, False],
        [True, True, False, False, False],
    ]


def test_hidden_loss_is_mean_squared_cosine_and_zero_for_a_removed_contribution():
    original = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    contribution = torch.tensor([[1.0, 1.0], [0.0, -5.0], [0.0, 0.0]])  # cos 1/sqrt(2), -1, gone
    assert objectives.hidden_loss(contribution, original).item() == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert objectives.hidden_loss(original, original).item() == pytest.approx(1.0)


def test_npo_loss_is_its_formula_and_stops_pushing_a_token_already_gone():
    beta = 0.1
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    tokens = torch.tensor([0, 2])
    ref = torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, None])[:, 0]
    # nothing removed: (2 / beta) log 2 at every position
    assert math.isclose(objectives.npo_loss(logits, tokens, ref, beta).item(), 2 / beta * math.log(2), rel_tol=1e-6)
    by_hand = [2 / beta * math.log1p(math.exp(beta * (lp - r))) for lp, r in zip([-4.0, -30.0], ref.tolist())]
    gone = torch.tensor([[-4.0, 0.0, 0.0], [0.0, 0.0, -30.0]])
    gone = gone - torch.logsumexp(gone, dim=-1, keepdim=True)  # log-probs: y at -4 and -30 nats (about)
    lp = gone.gather(-1, tokens[:, None])[:, 0]
    by_hand = [2 / beta * math.log1p(math.exp(beta * (a - r))) for a, r in zip(lp.tolist(), ref.tolist())]
    assert math.isclose(objectives.npo_loss(gone, tokens, ref, beta).item(), sum(by_hand) / 2, rel_tol=1e-5)
    # it falls towards 0 as y's probability falls below the original's: a token already gone is not pushed further
    far = torch.tensor([[-200.0, 0.0, 0.0], [0.0, 0.0, -200.0]])
    assert (
        objectives.npo_loss(far, tokens, ref, beta).item() < 0.01 * objectives.npo_loss(gone, tokens, ref, beta).item()
    )


def test_other_tails_loss_lets_the_tail_token_fall_and_keeps_the_others_odds():
    """KL over every token but the tail: zero at the original and when only the tail token falls; positive
    when a wrong tail falls with it; no gradient reaches the tail token's logit."""
    original = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.5, 0.5, 0.5, 3.0]])
    tokens = torch.tensor([0, 3])
    ref = objectives.other_tails_logprobs(original, tokens)
    assert torch.isfinite(ref).all() and torch.allclose(ref.exp().sum(-1), torch.ones(2))
    assert ref[0, 0].exp().item() == 0.0
    # by hand, row 0: p(v | v != 0) over [1, 0, -1]
    rest = torch.tensor([1.0, 0.0, -1.0]).softmax(-1)
    assert torch.allclose(ref[0, 1:].exp(), rest)
    assert objectives.other_tails_loss(original, tokens, ref).item() == pytest.approx(0.0, abs=1e-6)
    only_tail = original.clone()
    only_tail[0, 0], only_tail[1, 3] = -30.0, -30.0  # the fact gone, its alternatives as they were
    assert objectives.other_tails_loss(only_tail, tokens, ref).item() == pytest.approx(0.0, abs=1e-6)
    wrong_tail_too = only_tail.clone()
    wrong_tail_too[0, 1] = -30.0  # a wrong tail pushed down with it
    assert objectives.other_tails_loss(wrong_tail_too, tokens, ref).item() > 0.1
    logits = wrong_tail_too.clone().requires_grad_(True)
    objectives.other_tails_loss(logits, tokens, ref).backward()
    assert logits.grad[0, 0] == 0.0 and logits.grad[1, 3] == 0.0 and logits.grad[0, 1] < 0.0
