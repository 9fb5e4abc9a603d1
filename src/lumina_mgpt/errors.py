"""One exception type per package area; every message says what was wrong and what is accepted."""


class LuminaError(ValueError):
    """Base class of every error this package raises on purpose."""


class FormatError(LuminaError):
    """Bad layouts, Uni-Rep id streams, sizes, prompts or conversations (lumina_mgpt.formats)."""


class TokenizerError(LuminaError):
    """Unusable text tokenizers (lumina_mgpt.text)."""


class ImageTokenizerError(LuminaError):
    """Unusable images or image-tokenizer checkpoints (lumina_mgpt.vision)."""


class CheckpointError(LuminaError):
    """Bad model configs or checkpoint folders (lumina_mgpt.model)."""


class GenerationError(LuminaError):
    """Bad generation settings or inputs (lumina_mgpt.generation)."""


class DataError(LuminaError):
    """Bad data sources, shards or manifests (lumina_mgpt.data)."""


class TrainingError(LuminaError):
    """Bad recipes or training state (lumina_mgpt.training)."""
