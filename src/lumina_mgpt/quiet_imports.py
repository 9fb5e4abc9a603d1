"""Import optional third-party packages without their import-time log noise.

Importing diffusers imports torchao when it is installed, and both log warnings about features this
project never uses: torchao's prebuilt kernels for other CUDA or Python builds ("Failed to load
..._C_cutlass_90a.abi3.so"), a torch deprecation inside torchao, diffusers' support for torchao
checkpoints. A library should print nothing on import, so these loggers are raised to ERROR while
the import runs and restored afterwards; nothing is silenced after it.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

NOISY_IMPORT_LOGGERS = (
    "torchao",
    "torch.utils._pytree",
    "diffusers.quantizers.torchao.torchao_quantizer",
)


def import_quietly(module_name: str, attribute: str) -> Any:
    """`module_name.attribute` imported with the loggers above at ERROR. The attribute is read inside
    too: diffusers imports its models lazily, on first access."""
    loggers = [logging.getLogger(name) for name in NOISY_IMPORT_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        return getattr(importlib.import_module(module_name), attribute)
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
