"""LoRA adapters on the attention and MLP projections, and their merge back into plain weights.

`LoRALinear` keeps the frozen base matrix under the same name (`...q_proj.weight`) so that base
checkpoints load into an adapted model unchanged; the adapters add `...q_proj.lora_A.weight` and
`...q_proj.lora_B.weight`. Adapters are applied before FSDP sharding (the model must be unsharded).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lumina_mgpt.errors import TrainingError

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    """y = x W^T + (alpha / rank) * B(A(dropout(x))), with W frozen and B initialised to zero."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = nn.Parameter(base.weight.detach(), requires_grad=False)
        self.lora_A = nn.Linear(self.in_features, rank, bias=False, device=base.weight.device, dtype=base.weight.dtype)
        self.lora_B = nn.Linear(rank, self.out_features, bias=False, device=base.weight.device, dtype=base.weight.dtype)
        # A keeps nn.Linear's random init; B starts at zero so that a fresh adapter changes nothing.
        nn.init.zeros_(self.lora_B.weight)
        self.dropout = nn.Dropout(dropout)
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight) + self.lora_B(self.lora_A(self.dropout(x))) * self.scale

    def merged_weight(self) -> torch.Tensor:
        """W + scale * B A, computed in fp32 and returned in W's dtype."""
        delta = self.lora_B.weight.float() @ self.lora_A.weight.float()
        return (self.weight.float() + self.scale * delta).to(self.weight.dtype)


def apply_lora(
    model: nn.Module, rank: int, alpha: float, dropout: float = 0.0, targets: tuple[str, ...] = LORA_TARGETS
) -> int:
    """Freeze every parameter of `model` and replace the named projections by LoRALinear; returns their count."""
    if rank <= 0:
        raise TrainingError(f"lora rank={rank} is invalid; a positive integer is accepted")
    unknown = sorted(set(targets) - set(LORA_TARGETS))
    if unknown:
        raise TrainingError(f"lora targets {unknown} are unknown; accepted: {', '.join(LORA_TARGETS)}")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if name in targets and type(child) is nn.Linear:
                setattr(parent, name, LoRALinear(child, rank, alpha, dropout))
                replaced += 1
    if replaced == 0:
        raise TrainingError(f"no projection named {', '.join(targets)} was found; LoRA needs nn.Linear targets")
    return replaced


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear of an unsharded model by a plain nn.Linear holding the merged weight."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                plain = nn.Linear(child.in_features, child.out_features, bias=False, device="meta")
                plain.weight = nn.Parameter(child.merged_weight(), requires_grad=child.weight.requires_grad)
                setattr(parent, name, plain)
    return model
