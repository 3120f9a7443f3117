"""A small LoRA: low-rank adapters on a model's linear layers, and merging them back.

`add_lora` swaps each chosen `nn.Linear` for a `LoRALinear` that keeps the frozen base weight W
and adds scale * B @ A (A: [r, in], B: [out, r], B zero at first so the model starts unchanged).
`merge_lora` folds W + scale * B @ A back into a plain `nn.Linear`: the saved state dict has the
original keys and shapes, so a merged model loads and serves like any other.

Written here rather than taken from `peft`: ~60 lines for a custom nn.Module we own, no extra
dependency in the served environment, and nothing to unwrap before saving.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

# The linears of the attention and MLP blocks of `regressor.model` (by attribute name).
DEFAULT_TARGETS = ("qkv", "q", "kv", "out", "up")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        self.base.requires_grad_(False)
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear initialises

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + (x @ self.lora_a.T.to(x.dtype)) @ self.lora_b.T.to(x.dtype) * (
            self.scale
        )

    def delta(self) -> Tensor:
        """The low-rank update of the weight, [out, in]."""
        return (self.lora_b @ self.lora_a) * self.scale

    def merged(self) -> nn.Linear:
        """A copy of the base with the update folded in: its dtype and device, and no fresh
        `nn.Linear`, whose random initialisation moved torch's global generator (so whatever
        drew from it after an adaptation drew other numbers) and took the default dtype."""
        linear = copy.deepcopy(self.base)
        with torch.no_grad():
            linear.weight.copy_(self.base.weight + self.delta())  # rounded once, to its dtype
        return linear


def _targets(model: nn.Module, names: Iterable[str]) -> list[tuple[nn.Module, str, nn.Linear]]:
    wanted = set(names)
    found = []
    for parent in model.modules():
        for attr, child in parent.named_children():
            if attr in wanted and isinstance(child, nn.Linear):
                found.append((parent, attr, child))
    return found


def add_lora(
    model: nn.Module,
    rank: int,
    alpha: float | None = None,
    targets: Iterable[str] = DEFAULT_TARGETS,
) -> list[str]:
    """Freeze `model` and wrap its target linears with trainable adapters; returns their names."""
    model.requires_grad_(False)
    alpha = float(rank) if alpha is None else alpha  # scale 1: the update's size tracks the rank
    names = []
    for parent, attr, linear in _targets(model, targets):
        setattr(parent, attr, LoRALinear(linear, rank, alpha))
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            names.append(name)
    if not names:
        raise ValueError(f"no nn.Linear named any of {sorted(set(targets))} in the model")
    return names


def merge_lora(model: nn.Module) -> int:
    """Replace every LoRALinear by its merged nn.Linear, in place; returns how many."""
    wrapped = [
        (parent, attr, child)
        for parent in model.modules()
        for attr, child in parent.named_children()
        if isinstance(child, LoRALinear)
    ]
    for parent, attr, child in wrapped:
        setattr(parent, attr, child.merged())
    model.requires_grad_(True)
    return len(wrapped)
