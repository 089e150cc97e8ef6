"""Flax NNX front-ends over the pure functional model.

The model itself is pure functions over plain parameter pytrees (``bltjax.model.*``).  These thin
``nnx.Module`` wrappers hold the same pytree as ``nnx.Param`` variables, each tagged with its logical
axes (metadata ``logical_axes``, resolved to mesh axes by ``bltjax.sharding``), for users who want the
NNX object model.  Use them in the functional style::

    model = bltjax.nnx.BLT(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    logits = jax.jit(lambda s, t, l: nnx.merge(graphdef, s)(t, l))(state, tokens, patch_lengths)
"""

from __future__ import annotations

from typing import Optional

import jax
from flax import nnx

from bltjax import sharding
from bltjax.config import BLTConfig, TransformerConfig
from bltjax.model import blt, entropy_model


def _to_variables(params: dict) -> dict:
    axes = sharding.param_logical_axes(params)
    return jax.tree.map(lambda a, ax: nnx.Param(a, logical_axes=ax), params, axes,
                        is_leaf=sharding.is_axes_leaf)


def _to_arrays(variables) -> dict:
    return jax.tree.map(lambda v: v[...], variables, is_leaf=lambda x: isinstance(x, nnx.Variable))


class BLT(nnx.Module):
    """The Byte Latent Transformer as an NNX module: ``model(tokens_bn, patch_lengths_bp) -> logits``."""

    def __init__(self, cfg: BLTConfig, *, rngs: Optional[nnx.Rngs] = None, params: Optional[dict] = None):
        if params is None:
            if rngs is None:
                raise ValueError("BLT needs rngs (to initialise) or params (to wrap)")
            params = blt.init_params(cfg, rngs.params())
        self.cfg = cfg
        self.params = nnx.data(_to_variables(params))

    def __call__(self, tokens_bn: jax.Array, patch_lengths_bp: jax.Array) -> jax.Array:
        return blt.forward(self.param_tree(), self.cfg, tokens_bn, patch_lengths_bp)

    def param_tree(self) -> dict:
        """The plain pytree the functional API takes."""
        return _to_arrays(self.params)


class EntropyModel(nnx.Module):
    """The entropy model as an NNX module: ``model(tokens_bn) -> logits``."""

    def __init__(self, cfg: TransformerConfig, *, rngs: Optional[nnx.Rngs] = None,
                 params: Optional[dict] = None):
        if params is None:
            if rngs is None:
                raise ValueError("EntropyModel needs rngs (to initialise) or params (to wrap)")
            params = entropy_model.init_params(cfg, rngs.params())
        self.cfg = cfg
        self.params = nnx.data(_to_variables(params))

    def __call__(self, tokens_bn: jax.Array) -> jax.Array:
        return entropy_model.forward(self.param_tree(), self.cfg, tokens_bn)

    def param_tree(self) -> dict:
        return _to_arrays(self.params)
