"""The NNX wrappers compute exactly what the functional model computes, and carry logical axes."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import bltjax.nnx
from bltjax.config import TransformerConfig, tiny_blt_config
from bltjax.model import blt, entropy_model


def test_blt_module_matches_functional_forward():
    cfg = tiny_blt_config()
    model = bltjax.nnx.BLT(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    tokens = jnp.asarray([[1, 72, 105, 33, 36, 40, 41, 42, 43]], jnp.int32)
    lengths = jnp.asarray([[1, 4, 5]], jnp.int32)
    out = jax.jit(lambda s, t, l: nnx.merge(graphdef, s)(t, l))(state, tokens, lengths)
    ref = blt.forward(model.param_tree(), cfg, tokens, lengths)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)  # jit vs eager rounding
    assert state["params"]["decoder"]["output"].get_metadata()["logical_axes"] == ("embed", "vocab")
    wrapped = bltjax.nnx.BLT(cfg, params=model.param_tree())
    np.testing.assert_allclose(np.asarray(wrapped(tokens, lengths)), np.asarray(ref), atol=1e-6)


def test_entropy_module_matches_functional_forward():
    ecfg = TransformerConfig(dim=32, n_layers=1, n_heads=2, multiple_of=32)
    model = bltjax.nnx.EntropyModel(ecfg, rngs=nnx.Rngs(1))
    tokens = jnp.asarray([[1, 50, 60, 70]], jnp.int32)
    np.testing.assert_allclose(np.asarray(model(tokens)),
                               np.asarray(entropy_model.forward(model.param_tree(), ecfg, tokens)), atol=1e-6)
