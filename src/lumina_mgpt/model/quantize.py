"""Weight-only quantization of the decoder at load time, through torchao.

- "int8": symmetric int8 weights with one scale per output channel (torchao `Int8WeightOnlyConfig`);
  CPU and CUDA, any float dtype.
- "int4": asymmetric int4 weights in groups of 128 inputs, in the tinygemm layout that torch's own
  `_weight_int4pack_mm` kernel reads (torchao `Int4WeightOnlyConfig`, tile-packed); CUDA with
  bfloat16 weights only.

What is quantized: every linear layer of the decoder blocks (q/k/v/o projections and the SwiGLU
gate/up/down): 92% of the weights of v1 7B, 82% of v2 7B. What is not: the token embedding (a lookup,
nothing to gain in speed), the norms, and `lm_head`. The head's error lands directly in the logits
that sampling reads, and classifier-free guidance multiplies the difference of the conditional and
unconditional logits by its scale (4 by default), so quantizing it would cost the most accuracy for
4% (v1 7B) to 9% (v2 7B, 171,385-token vocabulary) of the weights.

Quantized weights are torchao tensor subclasses: the model still runs eagerly, under torch.compile
(and the engine's CUDA-graph step) and with speculative decoding. They are for inference; save the
unquantized model instead.
"""

from __future__ import annotations

import torch

from lumina_mgpt.errors import CheckpointError
from lumina_mgpt.model.transformer import Transformer
from lumina_mgpt.quiet_imports import import_quietly

QUANT_MODES = ("int8", "int4")
INT4_GROUP_SIZE = 128
_SUPPORTED = "int8 (CPU and CUDA) or int4 (CUDA with bfloat16 weights)"


def check_quantization(mode: str, device: torch.device | str, dtype: torch.dtype) -> None:
    """Refuse a quantization mode that cannot run on `device` with weights of `dtype`."""
    if mode not in QUANT_MODES:
        raise CheckpointError(f"unknown quantization {mode!r}; accepted: {_SUPPORTED}")
    if mode == "int4":
        if torch.device(device).type != "cuda":
            raise CheckpointError(
                f"int4 weight-only quantization needs CUDA (its kernels are GPU kernels), but the model is on "
                f"{device}; int8 works on CPU as well as CUDA"
            )
        if dtype != torch.bfloat16:
            raise CheckpointError(
                f"int4 weight-only quantization needs bfloat16 weights, got {dtype}; load with dtype=torch.bfloat16"
            )


def quantize_model(model: Transformer, mode: str) -> Transformer:
    """Quantize the linear layers of `model`'s decoder blocks in place ("int8" or "int4"); returns the model."""
    weight = model.lm_head.weight
    check_quantization(mode, weight.device, weight.dtype)
    linears = [(name, m) for name, m in model.model.layers.named_modules() if isinstance(m, torch.nn.Linear)]
    if mode == "int4":
        misfits = sorted({m.in_features for _, m in linears if m.in_features % INT4_GROUP_SIZE})
        if misfits:
            raise CheckpointError(
                f"int4 quantizes groups of {INT4_GROUP_SIZE} input features, but this model has linear layers with "
                f"{misfits} inputs; int4 needs multiples of {INT4_GROUP_SIZE} (use int8 for this model)"
            )
    # Imported here: torchao is slow to import and only needed when quantizing; its import logs
    # about kernels for other builds, hence quietly.
    quantize_ = import_quietly("torchao.quantization", "quantize_")
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig
    from torchao.quantization.quantize_.workflows import Int4PackingFormat

    if mode == "int8":
        config = Int8WeightOnlyConfig(set_inductor_config=False)
    else:
        config = Int4WeightOnlyConfig(
            group_size=INT4_GROUP_SIZE,
            int4_packing_format=Int4PackingFormat.TILE_PACKED_TO_4D,
            set_inductor_config=False,
        )
    # set_inductor_config=False: loading a model should not change global compiler settings.
    quantize_(model.model.layers, config, filter_fn=lambda module, _: isinstance(module, torch.nn.Linear))
    return model
