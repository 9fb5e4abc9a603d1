"""Process groups, FSDP2 wrapping and state-dict movement for training (the model knows none of this).

One process (plain `python`/`lumina train`) trains unsharded. Under torchrun (WORLD_SIZE > 1) every
block is wrapped with `fully_shard`, then the root; gloo on CPU, nccl on CUDA. Model weights move as
full state dicts held by rank 0 (that is what an HF export needs); optimizer state stays sharded and
is saved one file per rank, so resuming needs the same world size.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

from lumina_mgpt.errors import TrainingError

try:  # public since torch 2.6
    from torch.distributed.fsdp import fully_shard
except ImportError:  # torch 2.5
    from torch.distributed._composable.fsdp import fully_shard


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: rank, world size and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistributedContext:
    """Read torchrun's RANK/WORLD_SIZE/LOCAL_RANK and join the process group when there is more than one rank.

    `device=None` picks cuda:LOCAL_RANK when CUDA is present, else the CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        resolved = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        resolved = torch.device(device)
        if resolved.type == "cuda" and resolved.index is None:
            resolved = torch.device(f"cuda:{local_rank}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError(f"device {device!r} was requested but CUDA is not available; accepted: cpu")
        torch.cuda.set_device(resolved)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved)


@contextlib.contextmanager
def distributed_session(device: str | None = None) -> Iterator[DistributedContext]:
    """`init_distributed`, then leave the process group when the block ends.

    After a block that completed, every rank first meets at a barrier, so no rank closes its gloo
    connections while a peer is still finishing its last collective (the peer can abort then). After
    an exception there is no barrier: the other ranks may never arrive.
    """
    context = init_distributed(device)
    try:
        yield context
    except BaseException:
        _leave_process_group(completed=False)
        raise
    _leave_process_group(completed=True)


def _leave_process_group(*, completed: bool) -> None:
    if dist.is_initialized():
        if completed:
            dist.barrier()
        dist.destroy_process_group()


def barrier(context: DistributedContext) -> None:
    if context.is_distributed:
        dist.barrier()


def all_reduce_sum(value: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sum a tensor over ranks (in place) and return it; identity on one process."""
    if context.is_distributed:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def shard_model(model: nn.Module, context: DistributedContext) -> nn.Module:
    """FSDP2: `fully_shard` each block of `model.model.layers`, then the root (embeddings, norm, head)."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(context.device.type, (context.world_size,))
    for block in model.model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def gather_full_state(model: nn.Module, context: DistributedContext) -> dict[str, torch.Tensor]:
    """The full (unsharded) model state dict on the CPU of rank 0; an empty dict on the other ranks."""
    if not context.is_distributed:
        return {key: value.detach().to("cpu") for key, value in model.state_dict().items()}
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)
    return state if context.is_main else {}


def broadcast_full_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load into a sharded model the full state dict that rank 0 holds (other ranks pass {})."""
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, state, options=options)


def local_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """This rank's optimizer state keyed by parameter names, sharded tensors reduced to their local shard."""
    state = get_optimizer_state_dict(model, optimizer)
    return {
        "state": {
            name: {key: value.to_local() if isinstance(value, DTensor) else value for key, value in entry.items()}
            for name, entry in state["state"].items()
        },
        "param_groups": state["param_groups"],
    }


def load_local_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Inverse of `local_optimizer_state` on the same world size and sharding."""
    template = get_optimizer_state_dict(model, optimizer)  # materialises the state with its placements
    if set(template["state"]) != set(saved["state"]):
        missing = sorted(set(template["state"]) - set(saved["state"]))[:3]
        raise TrainingError(f"the saved optimizer state does not match the model (e.g. missing {missing})")
    restored = {}
    for name, entry in template["state"].items():
        restored[name] = {}
        for key, like in entry.items():
            value = saved["state"][name][key]
            if isinstance(like, DTensor):
                value = DTensor.from_local(
                    value.to(like.device), like.device_mesh, like.placements, shape=like.shape, stride=like.stride()
                )
            restored[name][key] = value
    set_optimizer_state_dict(model, optimizer, {"state": restored, "param_groups": saved["param_groups"]})
