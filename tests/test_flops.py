"""FLOPs per byte against hand counts from the paper's accounting (arXiv 2412.09871 §4.5, appendix B).

The paper (Eq. 13) sums, per byte,

    FL_BLT = Transformer.FL(h_G, l_G, m = n_ctx / n_p, V = 0) / n_p          global model, once per patch
           + Transformer.FL(h_E, l_E, m = w_E, V = 0)                       local encoder, per byte
           + Transformer.FL(h_D, l_D, m = w_D, V = 256)                     local decoder + output head
           + CrossAttn.FL(h_E, l_E, m = n_p, r = n_p / k) x k / n_p          encoder cross-attention
           + CrossAttn.FL(h_D, l_D, m = k, r = k / n_p)                      decoder cross-attention

with Chinchilla-style terms: a matmul costs 2 FLOPs per weight per token it is applied to
(q, k, v, o and the feed-forward), attention costs 2 x 2 x width x m per query (scores, then the
weighted sum of values), embedding lookups (bytes and hash n-grams) cost 0, and the backward pass costs
2x the forward (training = 3x).  Cross-attention projections are charged at the rate of the sequence
they are applied to: the encoder's k/v run on bytes and its q/o on the k query slots of each patch; the
decoder's q/o run on bytes and its k/v on the k slots of each patch.  bltjax takes m as the mean number
of keys a causal query sees (ramping up to the window) instead of the full window, and counts the
SwiGLU feed-forward with its real hidden size; norms are free.

The numbers below are written out by hand for one small configuration; ``test_hand_count_covers_every
_matmul_weight`` ties the hand count to the real parameter tree (a projection left out of the formula
would be caught there).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from bltjax import eval as ev
from bltjax.config import TransformerConfig, tiny_blt_config
from bltjax.model import blt

# tiny_blt_config with a 96-wide global model (so the k*dE = 64 -> 96 global input projection exists):
# dE = dD = 32, 2 heads, encoder 1 layer, decoder 2 layers, global 2 layers of 96, k = 2, window 16;
# encoder cross-attention in the last layer only (1), decoder in every layer (2); vocab 260.
# SwiGLU hidden: int(2 * 4d / 3) rounded up to multiple_of = 32 -> 96 for d = 32, 256 for d = 96.
CFG = tiny_blt_config(dim_global=96)

ENC_BLOCK = 4 * 32 * 32 + 3 * 32 * 96  # 13_312: q k v o + w1 w2 w3
DEC_BLOCKS = 2 * ENC_BLOCK  # 26_624
ENC_CROSS_KV = 1 * 2 * 32 * 32  # 2_048 (keys/values are the bytes)
DEC_CROSS_QO = 2 * 2 * 32 * 32  # 4_096 (queries are the bytes)
HEAD = 260 * 32  # 8_320
PER_BYTE_WEIGHTS = ENC_BLOCK + DEC_BLOCKS + ENC_CROSS_KV + DEC_CROSS_QO + HEAD  # 54_400

GLOBAL_BLOCKS = 2 * (4 * 96 * 96 + 3 * 96 * 256)  # 221_184
GLOBAL_IN_PROJ = 64 * 96  # 6_144
ENC_PATCH_PROJ = 32 * (2 * 32)  # 2_048: pooled patch -> k query slots
ENC_CROSS_QO = 1 * 2 * (2 * 32 * 32)  # 4_096: q and o on k = 2 slots per patch
DEC_PATCH_PROJ = 96 * (2 * 32)  # 6_144: global output -> k key slots
DEC_CROSS_KV = 2 * 2 * (2 * 32 * 32)  # 8_192: k and v on k = 2 slots per patch, 2 layers
# multiply-adds per patch (weights x the slots they run on)
PER_PATCH_MACS = GLOBAL_BLOCKS + GLOBAL_IN_PROJ + ENC_PATCH_PROJ + ENC_CROSS_QO + DEC_PATCH_PROJ + DEC_CROSS_KV


def hand_fwd(n: int, ps: int) -> float:
    local_keys = (16 * 17 / 2 + (n - 16) * 16) / n  # window 16: keys 1, 2, ..., 16, 16, ...
    n_patches = n / ps
    global_keys = (n_patches + 1) / 2  # causal over the patches of the row
    attn_byte = 4 * (1 * 32 + 2 * 32) * local_keys  # 3 local self-attention layers of width 32
    attn_byte += 4 * 2 * 32 * 2  # decoder cross: each byte sees its patch's k = 2 slots (2 layers)
    attn_byte += 4 * 1 * 32 * 2  # encoder cross: k slots x ps bytes per patch = k per byte
    attn_patch = 4 * 2 * 96 * global_keys  # 2 global layers of width 96
    return 2 * PER_BYTE_WEIGHTS + 2 * PER_PATCH_MACS / ps + attn_byte + attn_patch / ps


def test_hand_numbers():
    assert PER_BYTE_WEIGHTS == 54_400 and PER_PATCH_MACS == 247_808
    # n = 64, ps = 4: local keys 904 / 64 = 14.125; 16 patches, 8.5 keys each
    assert hand_fwd(64, 4) == 2 * 54_400 + 2 * 247_808 / 4 + 4 * 96 * 14.125 + 768 + 4 * 2 * 96 * 8.5 / 4 == 240_528


@pytest.mark.parametrize("n, ps", [(64, 4), (64, 8), (256, 6)])
def test_blt_flops_per_byte_matches_the_hand_count(n, ps):
    assert CFG.flops_per_byte(ps, n, training=False) == pytest.approx(hand_fwd(n, ps), rel=1e-12)
    assert CFG.flops_per_byte(ps, n, training=True) == pytest.approx(3 * hand_fwd(n, ps), rel=1e-12)


def test_hand_count_covers_every_matmul_weight():
    """Every weight matrix of the model is in the hand count once; only lookups and norms are left out."""
    shapes = jax.eval_shape(lambda k: blt.init_params(CFG, k), jax.random.key(0))
    free = ("tok_embeddings", "hash_embeddings", "norm")
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(shapes):
        name = jax.tree_util.keystr(path)
        if any(f in name for f in free):
            continue
        total += int(np.prod(leaf.shape))
    # the cross-attention q/o (encoder) and k/v (decoder) weights run on k = 2 slots per patch
    assert total == PER_BYTE_WEIGHTS + PER_PATCH_MACS - ENC_CROSS_QO // 2 - DEC_CROSS_KV // 2 == 296_064


def test_entropy_model_flops_per_byte_matches_the_hand_count():
    # 2 layers of 64 (4 heads of 16), SwiGLU hidden int(2 * 256 / 3) = 170 -> 256, vocab 260
    weights = 2 * (4 * 64 * 64 + 3 * 64 * 256) + 260 * 64  # 147_712 (the input embedding is a lookup)
    full = TransformerConfig(dim=64, n_layers=2, n_heads=4, multiple_of=256, sliding_window=None)
    assert ev.lm_flops_per_byte(full, 16) == pytest.approx(2 * weights + 4 * 2 * 64 * (17 / 2), rel=1e-12)
    windowed = TransformerConfig(dim=64, n_layers=2, n_heads=4, multiple_of=256, sliding_window=4)
    keys = (4 * 5 / 2 + 12 * 4) / 16  # 1, 2, 3, 4, 4, ... over 16 positions
    assert ev.lm_flops_per_byte(windowed, 16) == pytest.approx(2 * weights + 4 * 2 * 64 * keys, rel=1e-12)
    assert ev.lm_flops_per_byte(windowed, 16, training=True) == pytest.approx(
        3 * (2 * weights + 4 * 2 * 64 * keys), rel=1e-12)
