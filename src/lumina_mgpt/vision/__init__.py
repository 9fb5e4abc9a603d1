"""Image tokenizers: Chameleon VQGAN (v1), SBER-MoVQGAN (v2) and a small trainable VQ, one interface.

Heavy imports (torch, diffusers) happen on first use of these names, not at package import."""

__all__ = ["ImageTokenizer", "VQConfig", "images_to_tensor", "tensor_to_images"]

_LOCATIONS = {
    "ImageTokenizer": "lumina_mgpt.vision.tokenizer",
    "VQConfig": "lumina_mgpt.vision.config",
    "images_to_tensor": "lumina_mgpt.vision.pixels",
    "tensor_to_images": "lumina_mgpt.vision.pixels",
}


def __getattr__(name):
    if name in _LOCATIONS:
        import importlib

        return getattr(importlib.import_module(_LOCATIONS[name]), name)
    raise AttributeError(f"module 'lumina_mgpt.vision' has no attribute {name!r}")
