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

import torch
from torch import nn
from torch.func import functional_call

from knowsubnet.core.errors import InputError


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
    that call only (the remaining model's W_eff). `head` is the LM head (`get_output_embeddings`).
    """

    def __init__(self, model: nn.Module, first: int):
        self.model = model
        self.base = model.base_model
        _, self.blocks = find_blocks(model)
        if not 0 <= first < len(self.blocks):
            raise ValueError(f"first block {first} out of range for {len(self.blocks)} blocks")
        self.first = first
        self.head = model.get_output_embeddings()
        if self.head is None:
            raise InputError(f"{type(model).__name__}: no output embeddings (LM head) to score tokens with")
        # Parameter names are relative to the base model, which functional_call runs.
        base_path = next(name for name, module in model.named_modules() if module is self.base)
        self._strip = len(base_path) + 1 if base_path else 0

    def param_key(self, module_path: str) -> str:
        return module_path[self._strip:] + ".weight"

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

    def forward(self, hidden: torch.Tensor, weights: dict[str, torch.Tensor] | None = None,
                **model_kwargs) -> torch.Tensor:
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
            if weights:
                out = functional_call(self.base, {self.param_key(k): v for k, v in weights.items()}, (), kwargs,
                                      strict=False)
            else:
                out = self.base(**kwargs)
        finally:
            for i, block in enumerate(lower):
                self.blocks[i] = block
            handle.remove()
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def check_prefix_path(model: nn.Module, top: TopBlocks, input_ids: torch.Tensor, atol: float = 1e-4) -> float:
    """Compare cached-prefix logits with a plain full forward; raise if they disagree."""
    with torch.no_grad():
        full = model(input_ids=input_ids, use_cache=False).logits.float()
        cached = top.head(top.forward(top.prefix(input_ids))).float()
    diff = float((full - cached).abs().max())
    scale = float(full.abs().max()) or 1.0
    if not diff <= atol * max(1.0, scale):
        raise InputError(f"{type(model).__name__}: running the top blocks from cached hidden states disagrees "
                         f"with the full forward (max |delta logit| = {diff:.3g}); this architecture's blocks "
                         f"are not supported by the cached-prefix trainer")
    return diff
