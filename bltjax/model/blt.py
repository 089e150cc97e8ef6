"""The Byte Latent Transformer end to end (design §10): bytes -> patches -> bytes.

    tokens [B,N], patch_lengths [B,P] (rows sum to N+1 on the official inference path, first = 1)
    pid    = patch_ids_from_lengths(patch_lengths, N)
    e      = E_tok[x] + Σ hash embeddings                           local_encoder.embed
    h, q   = LocalEncoder(e, pid)                                   local_encoder.forward
    g      = GlobalTransformer(q viewed [B,P,k*dE])                 global_model.forward
    dpid   = patch_ids_from_lengths(patch_lengths[:,1:], N)         (the off-by-one)
    logits = LocalDecoder(h, g, dpid)                               local_decoder.forward

``P`` is static (the padded patch count); zero-length padding patches pool to 0, are causal-after the
real ones, and are never read by the decoder.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp

from bltjax import patcher
from bltjax.config import BLTConfig, PatcherConfig
from bltjax.model import entropy_model, global_model, local_decoder, local_encoder
from bltjax.model.attention import doc_ids_from_tokens
from bltjax.model.cross_attention import init_cross
from bltjax.model.layers import dtype_of, trunc_normal
from bltjax.model.transformer import init_stack
from bltjax.patcher import decoder_patch_ids, global_patch_tokens, patch_ids_from_lengths
from bltjax.sharding import constrain


def init_params(cfg: BLTConfig, key: jax.Array) -> dict:
    """Random parameters with the official initialisation rules (design §5.5)."""
    dt = dtype_of(cfg.param_dtype)
    dE, dD, dG, k = cfg.dim_local_encoder, cfg.dim_local_decoder, cfg.dim_global, cfg.cross_attn_k
    ks = iter(jax.random.split(key, 12))
    params = {
        "tok_embeddings": trunc_normal(next(ks), (cfg.vocab_size, dE), dE ** -0.5, dt),
        "hash_embeddings": trunc_normal(next(ks), (cfg.n_hash_tables, cfg.encoder_hash_byte_group_vocab, dE),
                                        dE ** -0.5, dt),
        "encoder": {
            "layers": init_stack(local_encoder.encoder_spec(cfg), next(ks), dt),
            "patch_projection": trunc_normal(next(ks), (dE, k * dE), dE ** -0.5, dt),
            "cross": init_cross(cfg.n_cross_encoder, dE, next(ks), dt),
        },
        "global": {"layers": init_stack(global_model.global_spec(cfg), next(ks), dt)},
        "decoder": {
            "patch_projection": trunc_normal(next(ks), (dG, k * dD), dG ** -0.5, dt),
            "cross": init_cross(cfg.n_cross_decoder, dD, next(ks), dt),
            "layers": init_stack(local_decoder.decoder_spec(cfg), next(ks), dt),
            "norm": jnp.ones((dD,), dt),
            "output": trunc_normal(next(ks), (dD, cfg.vocab_size), dD ** -0.5, dt),
        },
    }
    if cfg.global_input_projection:
        params["global"]["input_projection"] = trunc_normal(next(ks), (cfg.patch_dim, dG),
                                                            cfg.patch_dim ** -0.5, dt)
    return params


@functools.lru_cache(maxsize=32)
def _param_shapes(cfg: BLTConfig) -> dict[str, tuple[int, ...]]:
    shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    return {jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(shapes)}


def check_params(cfg: BLTConfig, params: dict) -> None:
    """ValueError naming the first parameter whose presence or shape does not fit ``cfg`` (a checkpoint
    of another size would otherwise fail inside a matmul with an anonymous shape error)."""
    want = _param_shapes(cfg)
    got = {jax.tree_util.keystr(p): tuple(jnp.shape(x)) for p, x in jax.tree_util.tree_leaves_with_path(params)}
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        raise ValueError(f"params do not fit the config: missing {missing[:3]}, unexpected {extra[:3]}")
    for path, shape in want.items():
        if got[path] != shape:
            raise ValueError(f"params{path} has shape {got[path]}, the config expects {shape}")


def check_inputs(cfg: BLTConfig, tokens_bn, patch_lengths_bp) -> None:
    """Static shape and dtype checks with clear messages (run at trace time)."""
    if tokens_bn.ndim != 2:
        raise ValueError(f"tokens must be [batch, bytes], got shape {tokens_bn.shape}")
    if patch_lengths_bp.ndim != 2 or patch_lengths_bp.shape[0] != tokens_bn.shape[0]:
        raise ValueError(f"patch_lengths must be [batch, patches] matching tokens {tokens_bn.shape}, "
                         f"got {patch_lengths_bp.shape}")
    for name, x in (("tokens", tokens_bn), ("patch_lengths", patch_lengths_bp)):
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(f"{name} must be integers, got dtype {x.dtype}")
    n, p = tokens_bn.shape[1], patch_lengths_bp.shape[1]
    if n > cfg.max_encoder_seq_length:
        raise ValueError(f"sequence of {n} bytes exceeds max_encoder_seq_length={cfg.max_encoder_seq_length}")
    if p > cfg.max_seqlen + 1:
        raise ValueError(f"{p} patches exceed the global model's max_seqlen={cfg.max_seqlen}")


def forward(params: dict, cfg: BLTConfig, tokens_bn: jax.Array, patch_lengths_bp: jax.Array, *,
            intermediates: bool = False, dense_cross: bool = False):
    """Next-byte logits [B, N, V] float32 (logit i predicts token i+1).

    ``intermediates=True`` also returns a dict with hash_embeds, enc_h, enc_cross, global_in,
    global_out (the fixture's activation names).  ``dense_cross`` forces the dense masked
    cross-attention reference (tests).
    """
    check_inputs(cfg, tokens_bn, patch_lengths_bp)
    check_params(cfg, params)
    n, n_patches = tokens_bn.shape[1], patch_lengths_bp.shape[1]
    bn = ("act_batch", "act_len")
    tokens_bn = constrain(tokens_bn, bn)
    patch_lengths_bp = constrain(patch_lengths_bp, ("act_batch", "act_patches"))
    pid = constrain(patch_ids_from_lengths(patch_lengths_bp, n), bn)
    dpid = constrain(decoder_patch_ids(patch_lengths_bp, n), bn)
    doc = constrain(doc_ids_from_tokens(tokens_bn, cfg.eos_id), bn) if cfg.local_doc_mask else None
    e = local_encoder.embed(params, cfg, tokens_bn)
    h, slots = local_encoder.forward(params, cfg, e, pid, n_patches, doc, dense_cross=dense_cross)
    gtok = constrain(global_patch_tokens(tokens_bn, pid, n_patches, cfg.eos_id), ("act_batch", "act_patches"))
    g_in, g_out = global_model.forward(params, cfg, slots, gtok)
    logits = local_decoder.forward(params, cfg, h, g_out, dpid, doc, dense_cross=dense_cross)
    if not intermediates:
        return logits
    return logits, dict(hash_embeds=e, enc_h=h, enc_cross=slots, global_in=g_in, global_out=g_out)


def patch_lengths(cfg: BLTConfig, entropy_params: Any, tokens_bn: jax.Array, *,
                  entropies_bn: Optional[jax.Array] = None, patcher_cfg: Optional[PatcherConfig] = None,
                  context: Optional[PatcherConfig] = None, max_patches: Optional[int] = None,
                  lengths_b: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    """Patch a batch as this BLT is trained and decoded: entropies (entropy mode), then
    ``patcher.model_patch_lengths`` (rows cover ``S + 1`` positions, first patch 1, static mode
    ``[1, ps, ps, ...]``).  Returns lengths ``int32 [B, P]`` and overflow ``bool [B]``.

    The one "entropies -> patch lengths" path of training, evaluation, generation and
    ``Pretrained.patch``.  Entropy mode uses ``entropies_bn`` when given (precomputed), else runs the
    frozen entropy model (``entropy_params``, ``cfg.entropy_model``) under ``stop_gradient``, with the
    context settings of ``context`` (default: the patcher's).  ``patcher_cfg`` replaces ``cfg.patcher``.
    """
    pcfg = cfg.patcher if patcher_cfg is None else patcher_cfg
    if pcfg.mode == "entropy" and entropies_bn is None:
        if entropy_params is None or cfg.entropy_model is None:
            raise ValueError("entropy patching needs the entropy model (model.entropy_model and its params)")
        entropies_bn = entropy_model.compute_entropies(jax.lax.stop_gradient(entropy_params), cfg.entropy_model,
                                                       pcfg if context is None else context, tokens_bn,
                                                       attention_impl=cfg.attention_impl)
    if entropies_bn is not None:
        entropies_bn = jax.lax.stop_gradient(entropies_bn.astype(jnp.float32))
    return patcher.model_patch_lengths(pcfg, tokens_bn, entropies_bn, max_patches=max_patches, lengths_b=lengths_b)


__all__ = ["init_params", "check_inputs", "forward", "patch_lengths"]
