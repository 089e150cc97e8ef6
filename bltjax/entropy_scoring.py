"""Entropy-model scoring: entropies of token rows and texts, and the real patcher over many rows.

Conventions (design §1-§3): documents are ``[BOS] bytes [EOS]``; ``H_i`` is the entropy model's
uncertainty about token ``i+1``.  Patch statistics use ``include_next_token=False`` (the training
convention) and "bytes per patch" counts tokens (BOS/EOS included).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal, Optional

import jax
import jax.numpy as jnp
import numpy as np

from bltjax.config import PatcherConfig, TransformerConfig
from bltjax.model import entropy_model as entropy_lm
from bltjax.patcher import patch_lengths
from bltjax.pretrained import EntropyModel

ThresholdMode = Literal["global", "monotonic"]
DEFAULT_THRESHOLD = PatcherConfig().threshold


# ============================================================================ entropies


def context_config(pcfg: PatcherConfig, reset_at_newline: Optional[bool] = None) -> PatcherConfig:
    """Only the entropy-*context* fields of ``pcfg`` (so thresholds never trigger recompiles)."""
    reset = pcfg.reset_context_at_newline if reset_at_newline is None else bool(reset_at_newline)
    return PatcherConfig(mode="entropy", entropy_chunk_len=pcfg.entropy_chunk_len, entropy_flatten_rows=False,
                         entropy_dtype=pcfg.entropy_dtype, reset_context_at_newline=reset)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _entropies_jit(params, ecfg: TransformerConfig, ctx: PatcherConfig, tokens_bn):
    return entropy_lm.compute_entropies(params, ecfg, ctx, tokens_bn)


def _progress(total: int, desc: str, enabled: bool):
    from bltjax.metrics import progress_bar

    return progress_bar(total=total, desc=desc, unit="row", enabled=enabled)


def row_entropies(model: EntropyModel, tokens_rn: np.ndarray, *, batch_size: int = 8,
                  reset_at_newline: Optional[bool] = None, progress: bool = False) -> np.ndarray:
    """Entropies ``float32 [R, N]`` of token rows, each row its own context (padding is harmless:
    attention is causal).  Rows are run ``batch_size`` at a time with one static shape."""
    tokens_rn = np.asarray(tokens_rn, np.int32)
    if tokens_rn.ndim != 2:
        raise ValueError(f"tokens must be [rows, N], got shape {tokens_rn.shape}")
    ctx = context_config(model.patcher, reset_at_newline)
    r, n = tokens_rn.shape
    b = max(1, min(batch_size, r))
    out = np.zeros((r, n), np.float32)
    with _progress(r, "entropies", progress) as bar:
        for lo in range(0, r, b):
            chunk = tokens_rn[lo:lo + b]
            pad = b - chunk.shape[0]
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, n), np.int32)])
            ent = _entropies_jit(model.params, model.config, ctx, jnp.asarray(chunk))
            out[lo:lo + b - pad] = np.asarray(ent)[:b - pad]
            bar.update(b - pad)
    return out


def text_entropies(model: EntropyModel, text: str | bytes, *, add_bos: bool = True, add_eos: bool = False,
                   reset_at_newline: Optional[bool] = None) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens int32 [N], entropies float32 [N])`` of one text (str: UTF-8; bytes: as they are)."""
    from bltjax.tokenizer import encode

    tokens = encode(text, add_bos=add_bos, add_eos=add_eos)
    if tokens.size == 0:
        raise ValueError("empty input: nothing to patch")
    ent = row_entropies(model, tokens[None], batch_size=1, reset_at_newline=reset_at_newline)[0]
    return tokens, ent


# ============================================================================ patch statistics


def threshold_patcher(base: PatcherConfig, threshold: float, mode: ThresholdMode,
                      max_patch_length: Optional[int] = None) -> PatcherConfig:
    """``base`` switched to entropy patching with ``threshold`` in global or monotonic mode."""
    if mode not in ("global", "monotonic"):
        raise ValueError(f"mode must be 'global' or 'monotonic', got {mode!r}")
    mpl = base.max_patch_length if max_patch_length is None else max_patch_length
    return dataclasses.replace(base, mode="entropy", threshold=float(threshold), threshold_add=None,
                               monotonicity=(mode == "monotonic"), max_patch_length=mpl,
                               max_patches=None).validate()


_patch_lengths_jit = jax.jit(patch_lengths, static_argnums=0, static_argnames=("include_next_token", "max_patches"))


def rows_patch_lengths(pcfg: PatcherConfig, tokens_rn: np.ndarray, entropies_rn: Optional[np.ndarray],
                       lengths_r: np.ndarray, *, include_next_token: bool = False,
                       block: int = 64, jit: bool = False) -> np.ndarray:
    """The real patcher (``bltjax.patcher.patch_lengths``) over many rows: ``int32 [R, N+1]``.

    ``jit=False`` runs it op by op: every op compiles once per shape and is reused for any threshold
    (what calibration needs); ``jit=True`` compiles the whole patcher once per config (one-off calls).
    """
    fn = _patch_lengths_jit if jit else patch_lengths
    tokens_rn = np.asarray(tokens_rn, np.int32)
    r, n = tokens_rn.shape
    out = np.zeros((r, n + 1), np.int32)
    b = max(1, min(block, r))
    for lo in range(0, r, b):
        hi = min(lo + b, r)
        pad = b - (hi - lo)

        def padded(a, fill=0):
            a = np.asarray(a[lo:hi])
            return np.concatenate([a, np.full((pad,) + a.shape[1:], fill, a.dtype)]) if pad else a

        ent = None if entropies_rn is None else jnp.asarray(padded(entropies_rn))
        lens, _ = fn(pcfg, jnp.asarray(padded(tokens_rn)), ent,
                                include_next_token=include_next_token, max_patches=n + 1,
                                lengths_b=jnp.asarray(padded(np.asarray(lengths_r, np.int32))))
        out[lo:hi] = np.asarray(lens)[:hi - lo]
    return out


@dataclasses.dataclass(frozen=True)
class PatchStats:
    """Patch statistics of rows: tokens, patches, mean size, histogram ``{length: count}``."""

    n_tokens: int
    n_patches: int
    histogram: dict[int, int]

    @property
    def bytes_per_patch(self) -> float:
        return self.n_tokens / max(self.n_patches, 1)


def patch_stats(lengths_rp: np.ndarray) -> PatchStats:
    lengths = np.asarray(lengths_rp).ravel()
    lengths = lengths[lengths > 0]
    values, counts = np.unique(lengths, return_counts=True)
    return PatchStats(n_tokens=int(lengths.sum()), n_patches=int(lengths.size),
                      histogram={int(v): int(c) for v, c in zip(values, counts)})


__all__ = ["ThresholdMode", "DEFAULT_THRESHOLD", "context_config", "row_entropies", "text_entropies",
           "threshold_patcher", "rows_patch_lengths", "PatchStats", "patch_stats"]
