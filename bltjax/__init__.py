"""bltjax: the Byte Latent Transformer in JAX/Flax.

Public API (imported lazily, so ``import bltjax`` stays cheap):

* ``bltjax.load_pretrained(path)``  — release dir, Hugging Face dir, bltjax checkpoint or training workdir
* ``bltjax.from_hub("facebook/blt-1b")`` — the same, for a Hugging Face hub repository (``bltjax.hub``)
* ``bltjax.generate(pretrained, prompts, ...)`` — cached, incremental generation
* ``bltjax.BLTConfig`` / ``TransformerConfig`` / ``PatcherConfig`` — model configuration
* ``bltjax.model.blt.init_params / forward`` — the pure functional model
"""

from bltjax.config import BLTConfig, PatcherConfig, TransformerConfig

__version__ = "0.1.0"

_LAZY = {
    "load_pretrained": ("bltjax.pretrained", "load_pretrained"),
    "Pretrained": ("bltjax.pretrained", "Pretrained"),
    "generate": ("bltjax.generation", "generate"),
    "from_hub": ("bltjax.hub", "from_hub"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'bltjax' has no attribute {name!r}")


__all__ = ["BLTConfig", "PatcherConfig", "TransformerConfig", *_LAZY]
