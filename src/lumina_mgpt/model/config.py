"""Transformer hyper-parameters, named presets and the HF Chameleon `config.json` mapping."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lumina_mgpt.errors import CheckpointError

# HF keys that ModelConfig owns; everything else in a config.json is carried verbatim in `hf_extras`
# (vocabulary_map, vq_config, token ids, ...) so that a saved folder keeps what it was loaded with.
_OWNED_HF_KEYS = {
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "rms_norm_eps",
    "swin_norm",
    "model_parallel_size",
    "max_position_embeddings",
    "dropout",
    "hidden_act",
    "attention_bias",
    "mlp_bias",
    "attention_dropout",
    "tie_word_embeddings",
    "head_dim",
    "model_type",
    # regenerated on save
    "architectures",
    "dtype",
    "torch_dtype",
}

# Keys whose only accepted value is the one our transformer implements.
_FIXED_HF_VALUES = {
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": False,
    "model_type": "chameleon",
}


@dataclass
class ModelConfig:
    """Shape and numerics of the Chameleon-architecture decoder.

    `qk_norm_rows` is the number of rows of the q_norm weight/bias as stored in the checkpoint: the
    official releases store one row per model-parallel rank (`model_parallel_size`, 1 for 7B), recent
    transformers one row per head. Rows are repeat-interleaved over the heads (see `k_norm_rows`).
    `hf_extras` holds the config.json fields this model does not interpret, written back on save.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    swin_norm: bool = False
    qk_norm_rows: int = 1
    max_position_embeddings: int = 4096
    dropout: float = 0.0
    hf_extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise CheckpointError(f"{name}={getattr(self, name)!r} is invalid; a positive integer is accepted")
        if self.hidden_size % self.num_heads:
            raise CheckpointError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}; "
                "hidden_size must be a multiple of num_heads"
            )
        if self.head_dim % 2:
            raise CheckpointError(f"head_dim={self.head_dim} is odd; rotary embeddings need an even head_dim")
        if self.num_heads % self.num_kv_heads:
            raise CheckpointError(
                f"num_kv_heads={self.num_kv_heads} does not divide num_heads={self.num_heads}; "
                "grouped-query attention needs num_heads to be a multiple of num_kv_heads"
            )
        if self.qk_norm_rows <= 0 or self.num_heads % self.qk_norm_rows or self.num_kv_heads % self.k_norm_rows:
            raise CheckpointError(
                f"qk_norm_rows={self.qk_norm_rows} does not divide num_heads={self.num_heads} and "
                f"num_kv_heads={self.num_kv_heads}; accepted: a divisor of both, or num_heads (one row per head)"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise CheckpointError(f"dropout={self.dropout} is invalid; a probability in [0, 1) is accepted")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads

    @property
    def k_norm_rows(self) -> int:
        """Rows of the k_norm weight: one per kv head in the per-head layout, else one per rank."""
        return self.num_kv_heads if self.qk_norm_rows == self.num_heads else self.qk_norm_rows

    @property
    def num_parameters(self) -> int:
        """Parameter count of the transformer built from this config."""
        h, kv = self.hidden_size, self.num_kv_heads * self.head_dim
        attention = 2 * h * h + 2 * h * kv + 2 * (self.qk_norm_rows + self.k_norm_rows) * self.head_dim
        block = attention + 3 * h * self.intermediate_size + 2 * h
        return self.num_layers * block + 2 * self.vocab_size * h + h

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named configuration (`PRESET_NAMES`), with fields replaced by `overrides`.

        `tiny` and `shapes` store one q/k-norm row per head (the transformers layout) so that the folders
        they save load in transformers too; the official presets use the released `model_parallel_size`.
        """
        if name not in _PRESETS:
            raise CheckpointError(f"unknown model preset {name!r}; accepted: {', '.join(PRESET_NAMES)}")
        fields = {**_PRESETS[name], **overrides}
        if name in _PER_HEAD_NORM_PRESETS and "qk_norm_rows" not in overrides:
            fields["qk_norm_rows"] = fields["num_heads"]
        unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise CheckpointError(f"unknown ModelConfig fields {sorted(unknown)}; accepted: the dataclass fields")
        if "vocab_size" not in fields:
            raise CheckpointError(f"preset {name!r} needs vocab_size=... (it depends on the tokenizer)")
        return cls(**fields)

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any]) -> ModelConfig:
        """Read an HF Chameleon `config.json` dict (official v1/v2 releases and recent transformers)."""
        for key, accepted in _FIXED_HF_VALUES.items():
            if key in hf and hf[key] != accepted:
                raise CheckpointError(f"config field {key}={hf[key]!r} is not supported; accepted: {accepted!r}")
        if hf.get("rope_scaling") is not None:
            raise CheckpointError(
                f"config field rope_scaling={hf['rope_scaling']!r} is not supported; accepted: null (plain RoPE)"
            )
        rope_theta = hf.get("rope_theta", 10000.0)
        rope_parameters = hf.get("rope_parameters")
        if rope_parameters is not None:
            if rope_parameters.get("rope_type", "default") != "default":
                raise CheckpointError(
                    f"config field rope_parameters={rope_parameters!r} is not supported; "
                    "accepted: rope_type 'default'"
                )
            rope_theta = rope_parameters.get("rope_theta", rope_theta)
        if hf.get("attention_dropout") not in (None, 0, 0.0):
            raise CheckpointError(
                f"config field attention_dropout={hf['attention_dropout']!r} is not supported; accepted: 0.0"
            )
        missing = [
            key
            for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
            if key not in hf
        ]
        if missing:
            raise CheckpointError(f"config.json lacks {missing}; these HF Chameleon fields are required")
        num_heads = hf["num_attention_heads"]
        config = cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=hf.get("num_key_value_heads") or num_heads,
            rope_theta=float(rope_theta),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
            swin_norm=bool(hf.get("swin_norm", False)),
            qk_norm_rows=hf.get("model_parallel_size") or 1,
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            dropout=float(hf.get("dropout", 0.0)),
            hf_extras={k: copy.deepcopy(v) for k, v in hf.items() if k not in _OWNED_HF_KEYS and v != {}},
        )
        if "head_dim" in hf and hf["head_dim"] not in (None, config.head_dim):
            raise CheckpointError(
                f"config field head_dim={hf['head_dim']!r} is not supported; accepted: hidden_size // "
                f"num_attention_heads = {config.head_dim}"
            )
        return config

    def to_hf_config(self) -> dict[str, Any]:
        """This config as an HF Chameleon `config.json` dict, loadable by transformers and the official code."""
        # transformers needs a vocabulary_map (image-token names); an empty one means "no image tokens".
        hf: dict[str, Any] = {"architectures": ["ChameleonForConditionalGeneration"], "vocabulary_map": {}}
        hf.update(copy.deepcopy(self.hf_extras))
        hf.update(
            {
                "model_type": "chameleon",
                "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size,
                "num_hidden_layers": self.num_layers,
                "num_attention_heads": self.num_heads,
                "num_key_value_heads": self.num_kv_heads,
                "hidden_act": "silu",
                "rms_norm_eps": self.rms_norm_eps,
                "rope_theta": self.rope_theta,
                "rope_scaling": None,
                "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
                "swin_norm": self.swin_norm,
                "model_parallel_size": self.qk_norm_rows,
                "max_position_embeddings": self.max_position_embeddings,
                "dropout": self.dropout,
                "attention_bias": False,
                "mlp_bias": False,
                "attention_dropout": 0.0,
                "tie_word_embeddings": False,
            }
        )
        return hf


_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        vocab_size=512, hidden_size=64, intermediate_size=176, num_layers=2, num_heads=4, num_kv_heads=2,
        max_position_embeddings=1024,
    ),
    "shapes": dict(
        hidden_size=256, intermediate_size=704, num_layers=8, num_heads=8, num_kv_heads=8,
        max_position_embeddings=4096,
    ),
    "lumina-mgpt-7b": dict(
        vocab_size=65536, hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32, num_kv_heads=32,
        max_position_embeddings=10240,
    ),
    # Chameleon 34B as released through transformers: GQA with 8 kv heads, swin norm, 4 model-parallel ranks.
    "lumina-mgpt-34b": dict(
        vocab_size=65536, hidden_size=8192, intermediate_size=22016, num_layers=48, num_heads=64, num_kv_heads=8,
        swin_norm=True, qk_norm_rows=4, max_position_embeddings=10240,
    ),
    "lumina-mgpt-2-2b": dict(
        vocab_size=171385, hidden_size=2048, intermediate_size=8192, num_layers=32, num_heads=32, num_kv_heads=32,
        max_position_embeddings=131072,
    ),
    "lumina-mgpt-2-7b": dict(
        vocab_size=171385, hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32, num_kv_heads=32,
        max_position_embeddings=131072,
    ),
}
_PER_HEAD_NORM_PRESETS = {"tiny", "shapes"}
PRESET_NAMES: tuple[str, ...] = tuple(_PRESETS)
