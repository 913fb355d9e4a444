"""The model side of CSQA finetuning: the multiple-choice head, the packed questions' model inputs
(one sequence per question, each choice attending to the question and itself), the removed-weight
masks, LoRA with a masked update, and one finetuned model version (`Variant`, lora / full)."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from knowsubnet.core.config import Csqa
from knowsubnet.downstream.csqa.data import Encoded
from knowsubnet.method import masking
from knowsubnet.models.top_blocks import TopBlocks

MODES = ("head", "lora", "full")

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


def new_head(model: nn.Module, seed: int) -> ChoiceHead:
    """The choice head for `model`'s hidden size, initialised from `seed`."""
    config = model.config
    hidden = config.hidden_size if hasattr(config, "hidden_size") else model.get_input_embeddings().weight.shape[1]
    return ChoiceHead(hidden, torch.Generator().manual_seed(int(seed)))


def gather_choices(hidden: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """hidden [B, L, d], last [B, 5] -> the states at each choice's classification token [B, 5, d]."""
    return hidden[torch.arange(hidden.shape[0], device=hidden.device)[:, None], last]


def removed_weight_masks(
    layers: list[masking.MaskableLayer], masks: Mapping[str, torch.Tensor] | None, granularity: str
) -> dict[str, torch.Tensor]:
    """{layer name: bool tensor shaped like its weight, True where the weight is removed}."""
    if masks is None:
        return {}
    return {
        layer.name: masking.expand_to_weight(masks[layer.name].bool().cpu(), layer, granularity).contiguous()
        for layer in layers
    }


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


def effective_weights(
    model: nn.Module, layer_names: list[str], removed: Mapping[str, torch.Tensor], mode: str
) -> dict[str, torch.Tensor]:
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


def max_abs_removed_weight(
    model: nn.Module, layer_names: list[str], removed: Mapping[str, torch.Tensor], mode: str
) -> float | None:
    """The largest |effective weight| at a removed position (0.0 when they are held at zero); None
    when nothing is removed."""
    weights = effective_weights(model, layer_names, removed, mode)
    return (
        max(
            (float(weights[n][removed[n].to(weights[n].device)].abs().max()) if bool(removed[n].any()) else 0.0)
            for n in layer_names
        )
        if removed
        else None
    )


def packed_inputs(enc: Encoded, index: Iterable[int], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The model inputs of questions `index` of `enc`, right-padded: input_ids and position_ids
    [B, L], and a 4D additive attention mask [B, 1, L, L] (0 = may attend, dtype's min = may not)
    letting each token see the earlier tokens of its own segment and of the question prefix
    (segment 0); padding sees only itself. Plus `last` [B, 5], each choice's classification token."""
    index = list(index)
    width = max(int(enc.ids[i].shape[0]) for i in index)
    ids = torch.zeros(len(index), width, dtype=torch.long)
    positions = torch.zeros(len(index), width, dtype=torch.long)
    segments = torch.full((len(index), width), -1, dtype=torch.long)
    for row, i in enumerate(index):
        n = enc.ids[i].shape[0]
        ids[row, :n], positions[row, :n], segments[row, :n] = enc.ids[i], enc.positions[i], enc.segments[i]
    query, key = segments[:, :, None], segments[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = causal & ((key == 0) | (key == query)) & (query >= 0)
    allowed |= torch.eye(width, dtype=torch.bool)  # padding rows attend to themselves (no empty softmax)
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return {
        "input_ids": ids,
        "position_ids": positions,
        "attention_mask": mask[:, None],
        "last": torch.stack([enc.last[i] for i in index]),
    }


def prefix_states(top: TopBlocks, enc: Encoded, index: Iterable[int], device: torch.device) -> dict[str, torch.Tensor]:
    """Hidden states entering the first masked block for questions `index` ([B, L, d], with the
    inputs the top blocks need to go on from there)."""
    inputs = packed_inputs(enc, index, top.base.dtype)
    kwargs = {k: inputs[k].to(device) for k in ("position_ids", "attention_mask")}
    return {"prefix": top.prefix(inputs["input_ids"].to(device), **kwargs), **kwargs, "last": inputs["last"]}


# ----------------------------------------------------------------------------------------------
# one model version being finetuned


class Variant:
    """One model version finetuned in `lora` or `full` mode: its copy of the model, head, optimiser.
    (`head` mode needs no copy: it trains a head on cached features, `features.head_features`.)"""

    def __init__(
        self,
        base: nn.Module,
        layer_names: list[str],
        transposed: dict[str, bool],
        removed: dict[str, torch.Tensor],
        mode: str,
        settings: Csqa,
        seed: int,
        device: torch.device,
        first_block: int,
    ):
        if mode not in ("lora", "full"):
            raise ValueError(f"Variant finetunes the model (lora, full), not {mode!r}")
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
        self.head = new_head(self.model, seed).to(device)
        self._hooks = []
        if mode == "lora":
            model_params = self._inject_lora(layer_names, transposed, settings.lora, seed)
        else:
            for p in self.model.parameters():
                p.requires_grad_(True)
            for name in layer_names:
                if name in removed:
                    weight = _get_module(self.model, name).weight
                    keep = removed[name].to(device)
                    self._hooks.append(weight.register_hook(lambda g, keep=keep: g.masked_fill(keep, 0.0)))
            model_params = list(self.model.parameters())
        self.params = list(self.head.parameters()) + model_params
        # the head is new and needs its own (larger) learning rate; the model's weights a small one
        self.optimizer = torch.optim.AdamW(
            [
                {"params": list(self.head.parameters()), "lr": settings.head_lr},
                {"params": model_params, "lr": settings.lr[mode]},
            ],
            weight_decay=settings.weight_decay,
        )
        self.top = TopBlocks(self.model, first_block) if mode == "lora" else None

    def _inject_lora(self, layer_names, transposed, lora_settings, seed) -> list[torch.Tensor]:
        # peft is imported here, not at the top: importing it loads transformers' model code (seconds),
        # and only the `lora` mode needs it
        from peft import LoraConfig, inject_adapter_in_model

        config = LoraConfig(
            r=int(lora_settings["r"]),
            lora_alpha=float(lora_settings["alpha"]),
            lora_dropout=0.0,
            target_modules=list(layer_names),
            bias="none",
            fan_in_fan_out=any(transposed.values()),
        )
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
            out.update(
                {f"model.{k}": v.detach().cpu().clone() for k, v in self.model.state_dict().items() if "lora_" in k}
            )
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
        """Final hidden state at each choice's classification token: [B, 5, d]. `batch`: from
        `prefix_states` (lora) or `packed_inputs` (full)."""
        kwargs = {k: batch[k].to(self.device) for k in ("position_ids", "attention_mask")}
        if self.top is not None:
            hidden = self.top.forward(batch["prefix"].to(self.device), **kwargs)
        else:
            hidden = self.model.base_model(
                input_ids=batch["input_ids"].to(self.device), use_cache=False, **kwargs
            ).last_hidden_state
        return gather_choices(hidden, batch["last"].to(self.device))

    def close(self) -> None:
        for handle in self._hooks:
            handle.remove()


@contextlib.contextmanager
def _quiet_peft():
    # peft warns that GPT-2's Conv1D needs fan_in_fan_out; it is set from the layers found.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield
