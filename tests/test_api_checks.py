"""Shape and dtype checks at the public entry points fail early with one clear line.

Without them a wrong input fails deep inside (an anonymous matmul shape error, a float used as a gather
index); these tests pin the message to the argument that is wrong.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import DATA

import bltjax
from bltjax.config import tiny_blt_config
from bltjax.generation import Model, generate
from bltjax.model import blt

CFG = tiny_blt_config()


@pytest.fixture(scope="module")
def params():
    return blt.init_params(CFG, jax.random.key(0))


def _inputs(n: int = 9):
    tokens = jnp.full((1, n), 70, jnp.int32)
    lengths = jnp.asarray([[1] + [4] * (n // 4) + ([n % 4] if n % 4 else [])], jnp.int32)
    assert int(lengths.sum()) == n + 1
    return tokens, lengths


def test_forward_rejects_float_tokens_and_lengths(params):
    tokens, lengths = _inputs()
    with pytest.raises(ValueError, match="tokens must be integers, got dtype float32"):
        blt.forward(params, CFG, tokens.astype(jnp.float32), lengths)
    with pytest.raises(ValueError, match="patch_lengths must be integers"):
        blt.forward(params, CFG, tokens, lengths.astype(jnp.float32))


def test_forward_and_generate_name_the_parameter_of_the_wrong_size(params):
    tokens, lengths = _inputs()
    other = tiny_blt_config(encoder_hash_byte_group_vocab=101)
    with pytest.raises(ValueError, match=r"params\['hash_embeddings'\] has shape \(6, 97, 32\), "
                                         r"the config expects \(6, 101, 32\)"):
        blt.forward(params, other, tokens, lengths)
    with pytest.raises(ValueError, match=r"missing \[\"\['hash_embeddings'\]\"\]"):
        blt.forward({k: v for k, v in params.items() if k != "hash_embeddings"}, CFG, tokens, lengths)
    with pytest.raises(ValueError, match=r"has shape .* the config expects"):
        generate(Model(other, params), ["Hi"], max_new_bytes=2)
    with pytest.raises(ValueError, match=r"missing \[\"\['global'\]\['input_projection'\]\"\]"):
        blt.forward(params, tiny_blt_config(dim_global=96), tokens, lengths)


def test_forward_output_shape_and_dtype(params):
    tokens, lengths = _inputs(13)
    logits = blt.forward(params, dataclasses.replace(CFG, dtype="bfloat16"), tokens, lengths)
    assert logits.shape == (1, 13, 260) and logits.dtype == jnp.float32


@pytest.mark.parametrize("bad, match", [
    (np.ones(5, np.int32), "2-D"),
    (np.ones((1, 5), np.float32), "integers"),
    (np.full((1, 5), 260, np.int32), "0..259"),
])
def test_pretrained_entry_points_reject_bad_tokens(bad, match):
    model = bltjax.load_pretrained(DATA / "tiny-entropy")
    for method in (model.logits, model.patch, model.entropies):
        with pytest.raises(ValueError, match=match):
            method(bad)
    with pytest.raises(ValueError, match=r"patch_lengths must be \[batch=1, patches\]"):
        model.logits(np.full((1, 5), 70, np.int32), np.ones(6, np.int32))
