"""The official fixture's intermediate activations and its bf16 (official realtime loader) entropies.

``tests/data/tiny-entropy/expected.npz`` was produced by the official code (see its README).  The final
logits and fp32 entropies are compared in test_pretrained.py; here every stage in between is compared
on its own, so a wrong stage is named by the failing key rather than only moving the logits:
hash embeddings (local-encoder input), encoder byte states, encoder cross-attention patch slots, the
global model's input and output.  The README's tolerance for an fp32 port is 1e-4; measured
differences are <= 6e-6, so 2e-5 is used (fp32 rounding through 3-5 layers).
"""

from __future__ import annotations

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import DATA

import bltjax
from bltjax.model import blt

TINY = DATA / "tiny-entropy"
N_SEQS = 4
STAGES = ("hash_embeds", "enc_h", "enc_cross", "global_in", "global_out")


@pytest.fixture(scope="module")
def fp32_model():
    return bltjax.load_pretrained(TINY)


@pytest.fixture(scope="module")
def realtime_model():
    return bltjax.load_pretrained(TINY, official_realtime=True)


@pytest.mark.parametrize("i", range(N_SEQS))
def test_intermediate_activations_match_the_official_code(fp32_model, expected, i):
    tokens = jnp.asarray(expected[f"s{i}_tokens"][None], jnp.int32)
    lengths = jnp.asarray(expected[f"s{i}_patch_lengths"][None], jnp.int32)
    logits, inter = blt.forward(fp32_model.params, fp32_model.config, tokens, lengths, intermediates=True)
    got = {k: np.asarray(inter[k])[0].reshape(expected[f"s{i}_{k}"].shape) for k in STAGES}
    got["logits"] = np.asarray(logits)[0]
    want = {k: expected[f"s{i}_{k}"] for k in (*STAGES, "logits")}
    chex.assert_trees_all_close(got, want, atol=2e-5, rtol=2e-5)
    # enc_cross [P*k, dE] is the global input [P, k*dE] viewed differently (no projection in this config)
    np.testing.assert_array_equal(got["global_in"].reshape(got["enc_cross"].shape), got["enc_cross"])


def test_padded_batch_intermediates_match(fp32_model, expected):
    tokens = jnp.asarray(expected["batch_tokens"], jnp.int32)
    lengths = jnp.asarray(expected["batch_patch_lengths"], jnp.int32)
    _, inter = blt.forward(fp32_model.params, fp32_model.config, tokens, lengths, intermediates=True)
    chex.assert_trees_all_close(
        {"enc_cross": np.asarray(inter["enc_cross"]), "global_out": np.asarray(inter["global_out"])},
        {"enc_cross": expected["batch_enc_cross"], "global_out": expected["batch_global_out"]}, atol=2e-5, rtol=2e-5)


# ---------------------------------------------------------------------------------------------- bf16
# The fixture's official bf16 entropies (official loader: bf16 weights and activations) differ from its
# fp32 entropies by up to 0.097 (README).  Two bf16 implementations round at different points, so ours
# cannot match the official bf16 values more closely than that noise level; measured: max 0.117, mean
# <= 0.025 per sequence.  What the test pins down: (1) ours stays inside the documented bf16 noise
# envelope (max <= 0.125 = 1.3 x 0.097, mean <= 0.035), (2) it is really the bf16 computation -- it
# differs from fp32 and its rounding error is correlated with the official one (measured 0.37-0.69; an
# fp32 path has no error to correlate, an unrelated bf16 computation has ~0), and (3) patch boundaries
# agree except where the official bf16 entropy sits within 0.01 of the threshold (one byte of s3,
# 0.0035 below it).
BF16_MAX, BF16_MEAN, MIN_CORR, NEAR_THRESHOLD = 0.125, 0.035, 0.25, 0.01


@pytest.mark.parametrize("i", range(N_SEQS))
def test_official_realtime_bf16_entropies_match_the_official_loader(realtime_model, expected, i):
    assert realtime_model.config.patcher.entropy_dtype == "bfloat16"
    tokens = expected[f"s{i}_tokens"][None]
    ours = realtime_model.entropies(tokens)[0]
    official = expected[f"s{i}_entropies_bf16_official_loader"]
    fp32 = expected[f"s{i}_entropies"]
    err = np.abs(ours - official)
    assert err.max() <= BF16_MAX and err.mean() <= BF16_MEAN, (err.max(), err.mean())
    assert np.abs(ours - fp32).max() > 0.02  # the bf16 path is taken (fp32 matches to 1e-5)
    corr = np.corrcoef(ours - fp32, official - fp32)[0, 1]
    assert corr > MIN_CORR, corr
    theta = realtime_model.config.patcher.threshold
    disagree = np.flatnonzero((ours > theta) != (official > theta))
    assert np.all(np.abs(official[disagree] - theta) < NEAR_THRESHOLD), [(j, official[j]) for j in disagree]
