"""Run a causal LM from one of its blocks upward, given the hidden states entering that block.

Training the mask, relearning and CommonsenseQA finetuning all change only the top blocks, so the
blocks below run once per input (`TopBlocks.prefix`, cached by the caller) and every later
forward runs the top blocks alone (`TopBlocks.forward`): the lower blocks are swapped for a
passthrough and the cached hidden states are injected by a forward pre-hook on the first block
run, so the model's own forward still builds what its blocks need (causal mask, rotary
embeddings, ...). This holds for any HF causal LM whose blocks take and return a plain
hidden-states tensor (GPT-2, Llama family in transformers 5); `check_prefix_path` checks it
numerically against a full forward.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from knowsubnet.core.errors import InputError

SHORT_ROWS = 64  # tokens: in bf16 on a CPU, rows this short run attention with the math kernel (`_attention`)


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The transformer blocks: the longest ModuleList whose children all share one class."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if len({type(child) for child in module}) == 1 and (best is None or len(module) > len(best[1])):
                best = (name, module)
    if best is None:
        raise InputError(f"{type(model).__name__}: found no list of transformer blocks to mask")
    return best


class _Passthrough(nn.Module):
    """Stands in for a frozen lower block whose output is already cached: returns its input."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class _StopForward(Exception):
    def __init__(self, hidden: torch.Tensor):
        self.hidden = hidden


def _replace_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden,) + tuple(args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _get_hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


class TopBlocks:
    """Run a causal LM from its block `first` upward, given the hidden states entering that block.

    `prefix(input_ids)` computes those hidden states with the full model (stopping at block
    `first`); `forward(hidden, weights)` runs blocks first.. + final norm and returns the final
    hidden states [B, T, d]; `weights` ({module path in the model: tensor}) replaces weights for
    that call only (the remaining model's W_eff). `head` is the LM head (`get_output_embeddings`);
    `logits(final)` applies it.

    `compute_dtype=torch.bfloat16` runs the top blocks and the head under bf16 autocast with bf16
    copies of their frozen matrices made once here (`compute_weights`), so no forward re-casts them;
    norms, biases and the model itself stay fp32. The caller's `weights` are cast to the compute
    dtype (a no-op for weights already in it). The copies are a snapshot: a weight written into the
    model later (relearning's steps) is seen only when passed in `weights`.
    """

    def __init__(self, model: nn.Module, first: int, compute_dtype: torch.dtype = torch.float32):
        self.model = model
        self.base = model.base_model
        blocks_path, self.blocks = find_blocks(model)
        if not 0 <= first < len(self.blocks):
            raise ValueError(f"first block {first} out of range for {len(self.blocks)} blocks")
        self.first = first
        self.head = model.get_output_embeddings()
        if self.head is None:
            raise InputError(f"{type(model).__name__}: no output embeddings (LM head) to score tokens with")
        # Parameter names are relative to the base model, which functional_call runs.
        base_path = next(name for name, module in model.named_modules() if module is self.base)
        self._strip = len(base_path) + 1 if base_path else 0
        self._blocks_path = blocks_path
        self.compute_dtype = compute_dtype
        self.compute_weights: dict[str, torch.Tensor] = {}  # {param key: bf16 copy}; empty in fp32
        self.head_weight = self.head.weight
        if compute_dtype != torch.float32:
            for index in range(first, len(self.blocks)):
                for module_path, module in self.blocks[index].named_modules():
                    weight = getattr(module, "weight", None)
                    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
                        path = f"{self._blocks_path}.{index}.{module_path}".strip(".")
                        self.compute_weights[self.param_key(path)] = weight.detach().to(compute_dtype)
            self.head_weight = self.head.weight.detach().to(compute_dtype)

    def autocast(self):
        """The autocast region of this compute dtype (off in fp32)."""
        device = self.head.weight.device.type
        return torch.autocast(device, dtype=self.compute_dtype, enabled=self.compute_dtype != torch.float32)

    def _attention(self, length: int):
        # torch 2.13's CPU flash-attention backward in bf16 is ~5x slower than the math kernel on short
        # rows (a batch of 64 facts x 13 tokens: 62 ms against 13 ms on one core); longer rows keep flash.
        slow_flash = (
            self.compute_dtype != torch.float32 and self.head.weight.device.type == "cpu" and length <= SHORT_ROWS
        )
        return sdpa_kernel([SDPBackend.MATH]) if slow_flash else contextlib.nullcontext()

    def weight(self, module_path: str) -> torch.Tensor:
        """A top-block layer's frozen weight in the compute dtype (the model's own tensor in fp32)."""
        key = self.param_key(module_path)
        return (
            self.compute_weights[key] if key in self.compute_weights else self.model.get_submodule(module_path).weight
        )

    def logits(self, final: torch.Tensor) -> torch.Tensor:
        """The LM head on final hidden states, in the compute dtype (the caller casts up for losses)."""
        if self.compute_dtype == torch.float32:
            return self.head(final)
        with self.autocast():
            return F.linear(final, self.head_weight, self.head.bias)

    def param_key(self, module_path: str) -> str:
        return module_path[self._strip :] + ".weight"

    @torch.no_grad()
    def prefix(self, input_ids: torch.Tensor, **model_kwargs) -> torch.Tensor:
        """Hidden states entering block `first` for `input_ids` [B, T] (no grad). `model_kwargs`
        (attention_mask, position_ids) go to the model's forward as they are."""

        def stop(module, args, kwargs):
            raise _StopForward(_get_hidden(args, kwargs))

        handle = self.blocks[self.first].register_forward_pre_hook(stop, with_kwargs=True)
        try:
            self.base(input_ids=input_ids, use_cache=False, **model_kwargs)
        except _StopForward as caught:
            return caught.hidden
        finally:
            handle.remove()
        raise RuntimeError("the first masked block was never called by the model's forward")

    def forward(
        self, hidden: torch.Tensor, weights: dict[str, torch.Tensor] | None = None, **model_kwargs
    ) -> torch.Tensor:
        """Final hidden states (after the final norm) from `hidden` entering block `first`;
        `model_kwargs` as in `prefix` (the same ones the prefix was computed with)."""

        def inject(module, args, kwargs):
            return _replace_hidden(args, kwargs, hidden)

        lower = [self.blocks[i] for i in range(self.first)]
        handle = self.blocks[self.first].register_forward_pre_hook(inject, with_kwargs=True)
        try:
            for i in range(self.first):
                self.blocks[i] = _Passthrough()
            # inputs_embeds only fixes the batch shape and positions here: the hook replaces what
            # reaches block `first` by `hidden` (GPT-2 adds position embeddings to inputs_embeds).
            kwargs = {"inputs_embeds": hidden, "use_cache": False, **model_kwargs}
            replaced = {
                **self.compute_weights,
                **{self.param_key(k): v.to(self.compute_dtype) for k, v in (weights or {}).items()},
            }
            with self.autocast(), self._attention(hidden.shape[1]):
                if replaced:
                    out = functional_call(self.base, replaced, (), kwargs, strict=False)
                else:
                    out = self.base(**kwargs)
        finally:
            for i, block in enumerate(lower):
                self.blocks[i] = block
            handle.remove()
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def block_output(
        self, hidden: torch.Tensor, block: int, weights: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """The output [B, T, d] of block `block` (first <= block) from `hidden` entering block `first`;
        the blocks above it do not run (RMU's steered block, the mask's hidden-state loss)."""

        def stop(module, args, output):
            raise _StopForward(output[0] if isinstance(output, tuple) else output)

        handle = self.blocks[block].register_forward_hook(stop)
        try:
            self.forward(hidden, weights)
        except _StopForward as caught:
            return caught.hidden
        finally:
            handle.remove()
        raise RuntimeError(f"block {block} was never called by the model's forward")


def check_prefix_path(model: nn.Module, top: TopBlocks, input_ids: torch.Tensor, atol: float = 1e-4) -> float:
    """Compare cached-prefix logits with a plain full forward; raise if they disagree."""
    with torch.no_grad():
        full = model(input_ids=input_ids, use_cache=False).logits.float()
        cached = top.head(top.forward(top.prefix(input_ids))).float()
    diff = float((full - cached).abs().max())
    scale = float(full.abs().max()) or 1.0
    if not diff <= atol * max(1.0, scale):
        raise InputError(
            f"{type(model).__name__}: running the top blocks from cached hidden states disagrees "
            f"with the full forward (max |delta logit| = {diff:.3g}); this architecture's blocks "
            f"are not supported by the cached-prefix trainer"
        )
    return diff
