"""The trainable mask: its logits (`MaskLogits`, one float32 leaf per maskable layer) and the
samplers that draw a training mask from them (Gumbel-sigmoid, hard-concrete), with the fused
Gumbel-sigmoid masked weight. Which weights a mask covers and how a binary mask is applied and
stored are `masking`.

Convention everywhere: m = 1 means "in the subnetwork", and the remaining model uses
W_eff = W * (1 - m). Samplers return m in the mask's own space (weight or neuron shape).
"""

from __future__ import annotations

import math

import torch

from knowsubnet.core.errors import InputError
from knowsubnet.core.sections import Mask
from knowsubnet.method.masking import GRANULARITIES, MaskableLayer, apply_mask, expand_to_weight

SAMPLERS = ("gumbel_sigmoid", "hard_concrete")

# Keep uniform noise strictly inside (0, 1) so that its logit stays finite.
_NOISE_EPS = 1e-6


def logit(p: float) -> float:
    """log(p / (1 - p)), the logit a mask entry starts from for init probability p."""
    if not 0.0 < p < 1.0:
        raise InputError(f"params key 'mask.init_prob' = {p}: expected a probability strictly between 0 and 1")
    return math.log(p) - math.log1p(-p)


def logistic_noise(
    shape, generator: torch.Generator | None, device=None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Logistic(0, 1) noise log(u) - log(1 - u), u ~ U(0, 1), drawn from `generator`."""
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    return u.logit_(_NOISE_EPS)


def _scaled(noise: torch.Tensor, scale: float) -> torch.Tensor:
    # Scale 1 leaves the draw untouched (bit-identical to unscaled); below 1 the sampled masks
    # approach the deterministic one (logit > 0) that is evaluated.
    return noise if scale == 1.0 else noise.mul_(scale)


def gumbel_sigmoid_sample(
    logits: torch.Tensor,
    tau: float = 1.0,
    generator: torch.Generator | None = None,
    hard: bool = True,
    noise_scale: float = 1.0,
) -> torch.Tensor:
    """Binary-concrete sample: soft = sigmoid((logits + noise_scale * logistic noise) / tau).

    hard=True returns the 0/1 mask (soft > 0.5) in the forward with the straight-through
    gradient of `soft` in the backward: m = hard - soft.detach() + soft.
    """
    y = (logits + _scaled(logistic_noise(logits.shape, generator, logits.device, logits.dtype), noise_scale)) / tau
    soft = torch.sigmoid(y)
    if not hard:
        return soft
    hard_mask = (y > 0).to(soft.dtype)  # y > 0  <=>  sigmoid(y) > 0.5
    return hard_mask - soft.detach() + soft


def hard_concrete_sample(
    logits: torch.Tensor,
    beta: float = 2.0 / 3.0,
    gamma: float = -0.1,
    zeta: float = 1.1,
    generator: torch.Generator | None = None,
    hard: bool = False,
    noise_scale: float = 1.0,
) -> torch.Tensor:
    """Hard-concrete sample (Louizos et al. 2018): a stretched, clamped binary-concrete variable.

    s = sigmoid((logits + logistic noise) / beta);  z = clamp(s * (zeta - gamma) + gamma, 0, 1).
    hard=True thresholds z at 0.5 in the forward, with z's (straight-through) gradient.
    """
    noise = _scaled(logistic_noise(logits.shape, generator, logits.device, logits.dtype), noise_scale)
    s = torch.sigmoid((logits + noise) / beta)
    z = (s * (zeta - gamma) + gamma).clamp(0.0, 1.0)
    if not hard:
        return z
    return (z > 0.5).to(z.dtype) - z.detach() + z


def hard_concrete_l0(
    logits: torch.Tensor, beta: float = 2.0 / 3.0, gamma: float = -0.1, zeta: float = 1.1
) -> torch.Tensor:
    """P(z != 0) for each hard-concrete entry: sigmoid(logits - beta * log(-gamma / zeta))."""
    return torch.sigmoid(logits - beta * math.log(-gamma / zeta))


class _GumbelMaskedWeight(torch.autograd.Function):
    """Fused W_eff = W * (1 - m) for a straight-through Gumbel-sigmoid weight mask.

    Forward: y = (logits + noise) / tau, m = [y > 0], W_eff = W with the subnetwork zeroed.
    Backward (straight-through, dm/dsoft = 1): dL/dlogits = -dL/dW_eff * W * soft * (1 - soft) / tau.
    Only `soft` is saved (W is the frozen parameter itself), and the backward writes into one new
    buffer, so a step holds no weight-sized temporaries beyond W_eff and the logit gradient.
    """

    @staticmethod
    def forward(ctx, logits, weight, noise, tau):
        y = noise.add_(logits)  # noise is a fresh buffer owned by this call: reuse it for y and soft
        if tau != 1.0:
            y.div_(tau)
        kept = y <= 0
        soft = y.sigmoid_()
        ctx.save_for_backward(weight, soft)
        ctx.tau = tau
        # W * [not in subnet]: the same numbers as masked_fill (a removed negative weight gives -0.0),
        # at 2-3x its speed on a CPU, where masked_fill branches per element
        return weight * kept

    @staticmethod
    def backward(ctx, grad_out):
        weight, soft = ctx.saved_tensors
        grad = torch.addcmul(soft, soft, soft, value=-1.0)  # soft * (1 - soft)
        grad.mul_(grad_out).mul_(weight)
        grad.mul_(-1.0 / ctx.tau)
        return grad, None, None, None


class MaskLogits:
    """Trainable mask logits for a list of maskable layers, one float32 leaf tensor per layer.

    Samplers: `gumbel_sigmoid` (hard 0/1 draw, straight-through gradient, temperature `tau`) or
    `hard_concrete` (stretched (gamma, zeta), temperature `beta`, clamped to [0, 1]; thresholded
    at 0.5 with a straight-through gradient when `hard_concrete_hard`).

    `effective_weights()` draws a training mask and turns it into the remaining model's weights
    W * (1 - m); with `deterministic=True` it uses the evaluation mask (logit > 0) instead.
    The frozen weights are read, never copied, except for the one W_eff per layer autograd needs.
    `frozen` ({layer name: W}) gives W in the compute dtype (bf16 copies: W_eff is then bf16 and
    the logits' gradient fp32); by default the layers' own weights.
    """

    @classmethod
    def from_params(
        cls,
        layers: list[MaskableLayer],
        mask: Mask,
        device: torch.device | str | None = None,
        frozen: dict[str, torch.Tensor] | None = None,
    ) -> MaskLogits:
        """The mask logits params `mask` (core.sections.Mask) describe."""
        hc = mask.hard_concrete
        return cls(
            layers,
            mask.granularity,
            mask.init_prob,
            mask.sampler,
            mask.tau,
            hc.beta,
            hc.gamma,
            hc.zeta,
            device=device,
            hard_concrete_hard=hc.hard,
            frozen=frozen,
        )

    def __init__(
        self,
        layers: list[MaskableLayer],
        granularity: str,
        init_prob: float,
        sampler: str,
        tau: float,
        beta: float,
        gamma: float,
        zeta: float,
        device: torch.device | str | None = None,
        *,
        hard_concrete_hard: bool,
        frozen: dict[str, torch.Tensor] | None = None,
    ):
        # no defaults: the values come from params `mask` (core.sections.Mask), their one source
        if granularity not in GRANULARITIES:
            raise InputError(
                f"params key 'mask.granularity' = {granularity!r}: expected one of {', '.join(GRANULARITIES)}"
            )
        if sampler not in SAMPLERS:
            raise InputError(f"params key 'mask.sampler' = {sampler!r}: expected one of {', '.join(SAMPLERS)}")
        if tau <= 0:
            raise InputError(f"params key 'mask.tau' = {tau}: expected a positive temperature")
        if sampler == "hard_concrete" and not (gamma < 0.0 and zeta > 1.0 and beta > 0):
            raise InputError("params key 'mask.hard_concrete': expected gamma < 0, zeta > 1 and beta > 0")
        self.layers = list(layers)
        self.frozen = frozen if frozen is not None else {layer.name: layer.weight for layer in self.layers}
        self.granularity = granularity
        self.sampler = sampler
        self.tau, self.beta, self.gamma, self.zeta = float(tau), float(beta), float(gamma), float(zeta)
        self.hard_concrete_hard = bool(hard_concrete_hard)  # threshold z at 0.5 in the forward (straight-through)
        start = logit(init_prob)
        self.logits: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            dev = device if device is not None else layer.weight.device
            self.logits[layer.name] = torch.full(
                layer.mask_shape(granularity), start, dtype=torch.float32, device=dev, requires_grad=True
            )

    def parameters(self) -> list[torch.Tensor]:
        return [self.logits[layer.name] for layer in self.layers]

    def numel(self) -> int:
        return sum(t.numel() for t in self.logits.values())

    def expected_density(self) -> torch.Tensor:
        """Differentiable expected share of mask entries in the subnetwork (the sparsity loss).

        Gumbel-sigmoid: mean sigmoid(logits); hard-concrete: mean P(z != 0) (the L0 expectation).
        The mean runs over all entries of all layers (for weight masks: over all masked weights).
        """
        total = None
        for value in self.parameters():
            if self.sampler == "gumbel_sigmoid":
                part = torch.sigmoid(value).sum()
            else:
                part = hard_concrete_l0(value, self.beta, self.gamma, self.zeta).sum()
            total = part if total is None else total + part
        return total / self.numel()

    @torch.no_grad()
    def density(self) -> float:
        """Share of mask entries in the deterministic subnetwork (logit > 0)."""
        return sum(int((v > 0).sum()) for v in self.logits.values()) / self.numel()

    def effective_weights(
        self, generator: torch.Generator | None = None, deterministic: bool = False, noise_scale: float = 1.0
    ) -> dict[str, torch.Tensor]:
        """{layer name: W * (1 - m)} for one training draw (or the deterministic mask).

        Weight-granularity Gumbel-sigmoid masks use the fused autograd function; other
        parametrisations compose the sampler with W * (1 - expand(m)).
        """
        out = {}
        for layer in self.layers:
            value = self.logits[layer.name]
            weight = self.frozen[layer.name]
            if deterministic:  # the evaluation subnetwork, logit > 0
                out.update(apply_mask([layer], {layer.name: value.detach() > 0}, self.granularity, weights=self.frozen))
            elif self.sampler == "gumbel_sigmoid" and self.granularity == "weight":
                noise = _scaled(logistic_noise(value.shape, generator, value.device, value.dtype), noise_scale)
                out[layer.name] = _GumbelMaskedWeight.apply(value, weight.detach(), noise, self.tau)
            else:
                m = self.sample_one(layer, generator, noise_scale)
                out[layer.name] = weight.detach() * (
                    1.0 - expand_to_weight(m, layer, self.granularity).to(weight.dtype)
                )
        return out

    def sample_one(
        self, layer: MaskableLayer, generator: torch.Generator | None, noise_scale: float = 1.0
    ) -> torch.Tensor:
        value = self.logits[layer.name]
        if self.sampler == "gumbel_sigmoid":
            return gumbel_sigmoid_sample(value, self.tau, generator, hard=True, noise_scale=noise_scale)
        return hard_concrete_sample(
            value, self.beta, self.gamma, self.zeta, generator, hard=self.hard_concrete_hard, noise_scale=noise_scale
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: value.detach().clone() for name, value in self.logits.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.logits):
            raise InputError(f"mask state has layers {sorted(state)[:3]}..., expected {sorted(self.logits)[:3]}...")
        with torch.no_grad():
            for name, value in state.items():
                self.logits[name].copy_(value)
