"""Text tokenizers: HF tokenizer.json folders (v1 Chameleon, v2 Qwen), offline Qwen, BPE training."""

from lumina_mgpt.text.tokenizer import TextTokenizer

__all__ = ["TextTokenizer"]
