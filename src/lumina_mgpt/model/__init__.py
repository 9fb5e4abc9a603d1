"""The Chameleon-architecture transformer: configs and presets, KV cache, checkpoint I/O."""

from lumina_mgpt.model.cache import KVCache
from lumina_mgpt.model.checkpoint import load_model, read_config, save_model
from lumina_mgpt.model.config import PRESET_NAMES, ModelConfig
from lumina_mgpt.model.packing import PackedLinear, pack_linear_weights
from lumina_mgpt.model.quantize import QUANT_MODES, check_quantization, quantize_model
from lumina_mgpt.model.transformer import LossOutput, Transformer, enable_activation_checkpointing

__all__ = [
    "KVCache",
    "LossOutput",
    "ModelConfig",
    "PRESET_NAMES",
    "PackedLinear",
    "QUANT_MODES",
    "Transformer",
    "check_quantization",
    "enable_activation_checkpointing",
    "load_model",
    "pack_linear_weights",
    "quantize_model",
    "read_config",
    "save_model",
]
