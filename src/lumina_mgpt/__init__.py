"""lumina-mgpt: Lumina-mGPT-style unified autoregressive image generation.

`from lumina_mgpt import Pipeline` is resolved lazily so that importing the package (and
`lumina --help`) does not pay for torch.
"""

__version__ = "0.1.0"
__all__ = ["Pipeline", "__version__"]


def __getattr__(name):
    if name == "Pipeline":
        from lumina_mgpt.generation.pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'lumina_mgpt' has no attribute {name!r}")
