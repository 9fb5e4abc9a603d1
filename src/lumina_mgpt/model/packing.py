"""Linear weights packed once into oneDNN's blocked layout, for decoding on CPU.

A decode step multiplies a handful of rows (2 per prompt with guidance, more with SJD drafts) by every
weight matrix. PyTorch's CPU `linear` re-lays the weight out for its GEMM kernel on every call, so it
streams the weights at a fraction of the memory bandwidth; with the layout fixed once, the same GEMM
reads them at close to the bandwidth. Measured on a 2-core EPYC (20 distinct 5632 x 2048 matrices, so
nothing stays in cache): fp32, 2 rows 10 -> 46 GB/s; bf16, 2 rows 30 -> 43 GB/s, where summing the
same bytes runs at ~44 GB/s (benchmarks/RESULTS.md). This is the weight prepacking that inductor's
freezing applies when it compiles for CPU, done here without compiling.

A packed weight is an opaque oneDNN tensor: it cannot be saved, moved to another device or trained.
`pack_linear_weights` therefore marks the model inference-only; load the folder again to do any of that.
Packing copies each weight; where the original lies in a memory-mapped checkpoint (`load_model` maps
files and keeps their dtype), its pages are handed back to the kernel once packed, so that a packed
model stays at about one copy of the weights in RAM instead of two.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import sys

import torch
from torch import nn

from lumina_mgpt.errors import CheckpointError

# The row count oneDNN picks its kernel for; decode batches are 2-16 rows (measured: any hint from 8 to
# 64 serves 1-64 rows within a few percent, a hint of 1 is 10-40% slower for fp32 beyond one row).
ROWS_HINT = 8


def can_pack(dtype: torch.dtype) -> bool:
    """Whether this build and CPU can pack weights of `dtype` (bf16 needs AVX-512 BF16-capable kernels)."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return False
    if dtype == torch.float32:
        return True
    return dtype == torch.bfloat16 and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class PackedLinear(nn.Module):
    """`nn.Linear` with its weight in oneDNN's packed layout (inference only, CPU)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(weight, ROWS_HINT))
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed"

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        raise CheckpointError(
            f"{prefix}packed_weight is packed for CPU inference and cannot be saved; load the model again "
            "without packing (Pipeline.from_pretrained(..., pack_weights=False)) to save or train it"
        )


class _FileMappings:
    """The address ranges of this process's file-backed private mappings (Linux /proc/self/maps)."""

    def __init__(self) -> None:
        ranges = []
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                path = fields[5].strip() if len(fields) == 6 else ""
                if fields[1][3] == "p" and path.startswith("/"):  # private, backed by a file
                    start, end = (int(address, 16) for address in fields[0].split("-"))
                    ranges.append((start, end))
        ranges.sort()
        self.starts = [start for start, _ in ranges]
        self.ranges = ranges

    def contains(self, start: int, end: int) -> bool:
        index = bisect.bisect_right(self.starts, start) - 1
        return index >= 0 and self.ranges[index][0] <= start and end <= self.ranges[index][1]


def _release_mapped_pages(tensor: torch.Tensor, mappings: _FileMappings | None) -> None:
    """Drop the resident pages of a tensor that views a private file mapping (they would be read from the
    file again if it were used): its packed copy replaces it."""
    if mappings is None:
        return
    page = mmap.PAGESIZE
    begin = tensor.data_ptr()
    end = begin + tensor.numel() * tensor.element_size()
    first, last = -(-begin // page) * page, end // page * page  # whole pages inside the tensor only
    if last > first and mappings.contains(begin, end):
        ctypes.CDLL(None).madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), 4)  # MADV_DONTNEED


def pack_linear_weights(model: nn.Module) -> int:
    """Replace, in place, every plain `nn.Linear` of the transformer blocks by a `PackedLinear`; returns
    how many were packed (0 when the weights are not on the CPU, not fp32 / bf16 on a CPU that can pack
    them, or already quantized). The model is inference-only afterwards (see the module docstring).
    lm_head stays as it is: the engine takes rows of it for its image-code head."""
    mappings = _FileMappings() if sys.platform.startswith("linux") else None
    count = 0
    for block in model.model.layers:
        for parent in block.modules():
            for name, child in list(parent.named_children()):
                if type(child) is not nn.Linear:
                    continue
                weight = child.weight
                if weight.device.type != "cpu" or type(weight.data) is not torch.Tensor or not can_pack(weight.dtype):
                    continue
                setattr(parent, name, PackedLinear(child))
                _release_mapped_pages(weight, mappings)
                count += 1
    if count:
        model.requires_grad_(False)
    return count
