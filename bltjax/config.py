"""Model configuration: frozen dataclasses for the BLT model, its entropy model and its patcher,
and every FLOP formula (``BLTConfig.flops_per_byte``, ``TransformerConfig.flops_per_byte``,
``train_flops_per_step``).

Every field of the official ``params.json`` that changes behaviour has a field here (design §20.10);
``bltjax.convert`` maps release / Hugging Face configs onto these classes and refuses fields it
cannot honour.  Semantic differences between the official code and the Hugging Face port are flags,
not code forks (``local_doc_mask``, ``entropy_chunk_len``, ``patches_sum_to_n``...).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Literal, Optional

PatchingMode = Literal["entropy", "space", "static", "byte", "bpe"]


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


# ---------------------------------------------------------------------- numeric range checks
# Every int field of a config dataclass is a size or count (>= 1) unless listed here with its own
# lower bound (None: any int).  Float fields must be finite, and > 0 when listed in POSITIVE_FLOATS.
# Keys are "ClassName.field"; check_ranges walks nested config dataclasses, so a new int field is
# range-checked without new code.
INT_FIELD_MINIMUM: dict[str, Optional[int]] = {
    "BLTConfig.eos_id": 0,
    "TransformerConfig.eos_id": 0,
    "TrainConfig.seed": None,
    "TrainConfig.eval_every": 0,  # 0 disables evaluation
    "TrainConfig.eval_batches": 0,
    "OptimConfig.warmup_steps": 0,
    "DataConfig.seed": 0,
    "DataConfig.worker_count": 0,
    "DataConfig.read_threads": 0,
    "DataConfig.prefetch_batches": 0,
    "PatcherConfig.max_patches": 2,
    "TrainConfig.seq_len": 2,
}
# Int fields where -1 is a sentinel ("the remaining devices") besides the minimum.
INT_FIELD_SENTINELS: dict[str, tuple[int, ...]] = {
    f"MeshConfig.{g}_{a}": (-1,) for g in ("ici", "dcn") for a in ("data", "fsdp", "tensor")
}
POSITIVE_FLOATS = frozenset({
    "PatcherConfig.patch_size", "TransformerConfig.norm_eps", "TransformerConfig.rope_theta",
    "TransformerConfig.ffn_dim_multiplier", "BLTConfig.norm_eps", "BLTConfig.rope_theta",
    "BLTConfig.ffn_dim_multiplier", "OptimConfig.lr", "OptimConfig.eps", "OptimConfig.clip",
})


def _range_error(key: str, value: Any, need: str) -> ValueError:
    return ValueError(f"{key} must be {need}, got {value!r}")


def check_ranges(cfg: Any, prefix: str = "") -> None:
    """Raise ValueError naming the dotted key of the first numeric field out of range.

    Walks ``cfg`` and every nested bltjax config dataclass (Optional sections only when set).  Runs
    before any derived size (head dim, FFN width, patch counts) is computed, so a zero or negative
    size is reported as such instead of a ZeroDivisionError deep inside the model.
    """
    if not type(cfg).__module__.startswith("bltjax."):
        return  # a section class from elsewhere checks its own fields in its validate()
    cls = type(cfg).__name__
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key, rule = f"{prefix}{f.name}", f"{cls}.{f.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_ranges(value, key + ".")
            continue
        items = value if isinstance(value, tuple) else (value,)
        for i, v in enumerate(items):
            where = key if not isinstance(value, tuple) else f"{key}[{i}]"
            if isinstance(v, bool) or v is None:
                continue
            if isinstance(v, int):
                lo = INT_FIELD_MINIMUM.get(rule, 1)
                if lo is not None and v < lo and v not in INT_FIELD_SENTINELS.get(rule, ()):
                    extra = "".join(f" or {s}" for s in INT_FIELD_SENTINELS.get(rule, ()))
                    raise _range_error(where, v, f"an integer >= {lo}{extra}")
            elif isinstance(v, float):
                if not math.isfinite(v):
                    raise _range_error(where, v, "a finite number")
                if rule in POSITIVE_FLOATS and v <= 0:
                    raise _range_error(where, v, "> 0")


def mean_causal_context(seq_len: int, window: Optional[int]) -> float:
    """Mean number of keys a query attends to in a causal (optionally windowed) sequence:
    ``sum_{i=1..L} min(i, w) / L``."""
    w = seq_len if window is None else min(window, seq_len)
    return (w * (w + 1) / 2 + (seq_len - w) * w) / seq_len


def ffn_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: Optional[float]) -> int:
    """SwiGLU hidden size rule (design §5.4): int(2*4d/3), optional multiplier, round up."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PatcherConfig:
    """How byte sequences are cut into patches (design §3)."""

    mode: PatchingMode = "entropy"
    # Entropy modes.  threshold=None with mode="entropy" selects the fixed-patch-count variant.
    threshold: Optional[float] = 1.335442066192627
    threshold_add: Optional[float] = None  # global + monotonic when set (and monotonicity False)
    monotonicity: bool = False  # relative ("monotonic") mode, takes precedence over threshold_add
    patch_size: float = 4.5  # static patch size, and target size of the fixed-count entropy mode
    max_patch_length: Optional[int] = None
    # Static shapes: patches per row are padded to this maximum (None: derived from sequence length).
    max_patches: Optional[int] = None
    # Entropy model context: the official realtime path runs the entropy model on 8192-byte chunks
    # of the flattened batch (rows leak into each other).  None = per row, whole sequence (the fix).
    entropy_chunk_len: Optional[int] = None
    entropy_flatten_rows: bool = False  # reproduce official cross-row context leakage (issue #123)
    entropy_dtype: str = "float32"  # official realtime loader forces bfloat16
    reset_context_at_newline: bool = False  # paper §4.4 option
    # Hugging Face port convention (design §16.3): lengths cover the N real bytes only -- the virtual
    # next-byte position is dropped from the last patch (which may leave a trailing zero-length
    # patch) and, with max_patch_length, zero-length patches are dropped.  Patch ids are unchanged
    # for single rows; applied by bltjax.pretrained on top of the official include_next_token lengths.
    patches_sum_to_n: bool = False

    def validate(self) -> PatcherConfig:
        check_ranges(self)
        _check(self.mode in ("entropy", "space", "static", "byte", "bpe"),
               f"unknown patching mode {self.mode!r}")
        _check(self.max_patch_length is None or self.max_patch_length >= 1,
               "max_patch_length must be >= 1")
        _check(self.patch_size > 0, "patch_size must be > 0")
        if self.mode == "static":
            _check(float(self.patch_size).is_integer(), "static patching needs an integer patch_size")
        _check(self.max_patches is None or self.max_patches >= 2, "max_patches must be >= 2")
        return self


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerConfig:
    """A plain pre-norm Llama-style byte transformer: the entropy model (design §2)."""

    dim: int = 768
    n_layers: int = 14
    n_heads: int = 12
    n_kv_heads: Optional[int] = None
    head_dim: Optional[int] = None
    vocab_size: int = 260
    multiple_of: int = 256
    ffn_dim_multiplier: Optional[float] = 1.0
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seqlen: int = 8192
    sliding_window: Optional[int] = 512  # None: plain causal
    doc_mask: bool = True  # split attention at EOS (official xformers path); HF port: False
    eos_id: int = 2

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def hdim(self) -> int:
        return self.head_dim or self.dim // self.n_heads

    @property
    def ffn_dim(self) -> int:
        return ffn_hidden_dim(self.dim, self.multiple_of, self.ffn_dim_multiplier)

    def validate(self) -> TransformerConfig:
        check_ranges(self)
        _check(self.dim % self.n_heads == 0 or self.head_dim is not None,
               f"dim {self.dim} not divisible by n_heads {self.n_heads}")
        _check(self.n_heads % self.kv_heads == 0, "n_heads must be a multiple of n_kv_heads")
        _check(self.hdim % 2 == 0, "head_dim must be even for RoPE")
        return self

    def num_params(self) -> int:
        d, f, hd = self.dim, self.ffn_dim, self.hdim
        attn = d * self.n_heads * hd * 2 + d * self.kv_heads * hd * 2
        layer = attn + 3 * d * f + 2 * d
        return self.n_layers * layer + 2 * self.vocab_size * d + d

    def flops_per_byte(self, seq_len: int, training: bool = False) -> float:
        """Forward (or training, 3x) FLOPs per byte of this byte LM (e.g. the entropy model):
        2 x (matmul weights incl. the output head; embedding lookup and norms are free) + attention
        scores and weighted values (4 x width x mean causal keys per layer)."""
        d, hd = self.dim, self.hdim
        blocks = self.n_layers * (2 * d * self.n_heads * hd + 2 * d * self.kv_heads * hd + 3 * d * self.ffn_dim)
        matmul_params = blocks + self.vocab_size * d  # the output head; the input embedding is a lookup
        attn = 2 * 2 * self.n_layers * self.n_heads * self.hdim * mean_causal_context(seq_len, self.sliding_window)
        fwd = 2 * matmul_params + attn
        return fwd * (3.0 if training else 1.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BLTConfig:
    """The Byte Latent Transformer (design §4-§10).  Defaults = the released blt-1b."""

    vocab_size: int = 260
    eos_id: int = 2
    # Local encoder / decoder (byte level)
    dim_local_encoder: int = 1024
    dim_local_decoder: int = 1024
    n_layers_local_encoder: int = 1
    n_layers_local_decoder: int = 9
    n_heads_local_encoder: int = 16
    n_heads_local_decoder: int = 16
    n_kv_heads: Optional[int] = None  # shared by the local models
    local_attention_window_len: Optional[int] = 512
    max_encoder_seq_length: int = 24576  # RoPE table / byte cap per row
    local_doc_mask: bool = True  # split local attention at EOS (official); HF port: False
    # Global (latent) transformer
    dim_global: int = 2048
    n_layers_global: int = 25
    n_heads_global: int = 16
    n_kv_heads_global: Optional[int] = None
    global_attn: Literal["causal", "block_causal"] = "causal"
    max_seqlen: int = 4096  # patches per row (RoPE table)
    # Shared block hyper-parameters
    multiple_of: int = 256
    ffn_dim_multiplier: Optional[float] = 1.0
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    # Cross attention
    cross_attn_encoder: bool = True
    cross_attn_decoder: bool = True
    cross_attn_k: int = 2
    cross_attn_nheads: int = 16
    cross_attn_all_layers_encoder: bool = False
    cross_attn_all_layers_decoder: bool = True
    cross_attn_window_encoder: Optional[int] = None
    cross_attn_window_decoder: Optional[int] = None
    cross_attn_init_by_pooling: bool = True
    downsampling_by_pooling: Literal["max", "avg", "min"] = "max"
    # Hash n-gram embeddings
    encoder_hash_byte_group_size: tuple[int, ...] = (3, 4, 5, 6, 7, 8)
    encoder_hash_byte_group_vocab: int = 500002
    encoder_hash_byte_group_nb_functions: int = 1
    # Patching and the entropy model that drives it (None: no entropy model)
    patcher: PatcherConfig = dataclasses.field(default_factory=PatcherConfig)
    entropy_model: Optional[TransformerConfig] = None
    # Compute
    dtype: str = "float32"  # activation / matmul dtype ("bfloat16" for speed)
    param_dtype: str = "float32"
    attention_impl: Literal["auto", "xla", "cudnn", "splash"] = "auto"
    remat: Literal["none", "full", "dots"] = "none"
    scan_layers: bool = True

    # ------------------------------------------------------------------ derived sizes
    @property
    def n_hash_tables(self) -> int:
        return len(self.encoder_hash_byte_group_size) * self.encoder_hash_byte_group_nb_functions

    @property
    def patch_dim(self) -> int:
        """Width of a patch vector entering the global model (k * d_E)."""
        return self.cross_attn_k * self.dim_local_encoder

    @property
    def global_input_projection(self) -> bool:
        return self.patch_dim != self.dim_global

    def local_ffn_dim(self, dim: int) -> int:
        return ffn_hidden_dim(dim, self.multiple_of, self.ffn_dim_multiplier)

    @property
    def n_cross_encoder(self) -> int:
        if not self.cross_attn_encoder:
            return 0
        return self.n_layers_local_encoder if self.cross_attn_all_layers_encoder else 1

    @property
    def n_cross_decoder(self) -> int:
        if not self.cross_attn_decoder:
            return 0
        return self.n_layers_local_decoder if self.cross_attn_all_layers_decoder else 1

    def validate(self) -> BLTConfig:
        check_ranges(self)
        _check(self.dim_local_encoder == self.dim_local_decoder,
               "dim_local_decoder must equal dim_local_encoder (the decoder reads encoder states)")
        for name, d, h in (("local_encoder", self.dim_local_encoder, self.n_heads_local_encoder),
                           ("local_decoder", self.dim_local_decoder, self.n_heads_local_decoder),
                           ("global", self.dim_global, self.n_heads_global)):
            _check(d % h == 0, f"dim_{name} ({d}) must be divisible by its head count ({h})")
            _check((d // h) % 2 == 0, f"{name} head_dim must be even for RoPE")
        kv = self.n_kv_heads or self.n_heads_local_encoder
        _check(self.n_heads_local_encoder % kv == 0 and self.n_heads_local_decoder % kv == 0,
               "local head counts must be multiples of n_kv_heads")
        kvg = self.n_kv_heads_global or self.n_heads_global
        _check(self.n_heads_global % kvg == 0, "n_heads_global must be a multiple of n_kv_heads_global")
        _check(self.cross_attn_encoder and self.cross_attn_decoder,
               "bltjax implements BLT with cross-attention in encoder and decoder "
               "(cross_attn_encoder/decoder=False is the legacy MegaByte path)")
        _check(self.cross_attn_init_by_pooling,
               "cross_attn_init_by_pooling=False is not supported (no released model uses it)")
        _check(self.dim_local_encoder % self.cross_attn_nheads == 0,
               "dim_local_encoder must be divisible by cross_attn_nheads")
        _check(self.downsampling_by_pooling in ("max", "avg", "min"),
               f"unsupported downsampling_by_pooling {self.downsampling_by_pooling!r}")
        _check(self.global_attn in ("causal", "block_causal"), f"bad global_attn {self.global_attn!r}")
        _check(self.cross_attn_k >= 1, "cross_attn_k must be >= 1")
        _check(all(n >= 1 for n in self.encoder_hash_byte_group_size), "hash n-gram sizes must be >= 1")
        _check(self.dtype in ("float32", "bfloat16", "float16"), f"bad dtype {self.dtype!r}")
        _check(self.param_dtype in ("float32", "bfloat16"), f"bad param_dtype {self.param_dtype!r}")
        self.patcher.validate()
        if self.entropy_model is not None:
            self.entropy_model.validate()
        return self

    # ------------------------------------------------------------------ accounting
    def num_params(self, include_hash: bool = True) -> dict[str, int]:
        """Parameter counts per component (embedding tables included unless stated)."""

        def block(d: int, heads: int, kv: int) -> int:
            hd = d // heads
            return 2 * d * heads * hd + 2 * d * kv * hd + 3 * d * self.local_ffn_dim(d) + 2 * d

        dE, dD, dG, k = self.dim_local_encoder, self.dim_local_decoder, self.dim_global, self.cross_attn_k
        kv_l = self.n_kv_heads or self.n_heads_local_encoder
        kv_l_dec = self.n_kv_heads or self.n_heads_local_decoder
        cross_e = self.n_cross_encoder * (4 * dE * dE + 2 * dE)
        cross_d = self.n_cross_decoder * (4 * dD * dD + 2 * dD)
        enc = self.n_layers_local_encoder * block(dE, self.n_heads_local_encoder, kv_l) + cross_e
        enc += dE * k * dE  # patch_embedding_projection
        dec = self.n_layers_local_decoder * block(dD, self.n_heads_local_decoder, kv_l_dec) + cross_d
        dec += dG * k * dD + dD  # patch projection + final norm
        glob = self.n_layers_global * block(dG, self.n_heads_global, self.n_kv_heads_global or self.n_heads_global)
        if self.global_input_projection:
            glob += self.patch_dim * dG
        emb = self.vocab_size * dE
        head = self.vocab_size * dD
        hashes = self.n_hash_tables * self.encoder_hash_byte_group_vocab * dE if include_hash else 0
        out = dict(local_encoder=enc, global_transformer=glob, local_decoder=dec,
                   byte_embedding=emb, output_head=head, hash_embeddings=hashes)
        out["total"] = sum(out.values())
        return out

    def flops_per_byte(self, bytes_per_patch: float, seq_len_bytes: int, training: bool = True) -> float:
        """Paper FLOPs per byte (arXiv 2412.09871 §4.5 Eq. 13 and appendix B; design §11).

        Forward per byte = 2 x (matmul weights applied once per byte)
        + 2 x (matmul weights applied once per patch) / bytes_per_patch
        + attention scores and weighted values, 4 x width x (keys per query) per attention layer.

        Per byte: local encoder and decoder blocks (q, k, v, o, SwiGLU), the encoder cross-attention's
        k/v (its keys are bytes), the decoder cross-attention's q/o (its queries are bytes), the output
        head.  Per patch: the global blocks and input projection, the encoder patch projection and
        cross-attention q/o (k query slots per patch), the decoder patch projection and cross-attention
        k/v (k key slots per patch).  Keys per query: the mean causal (windowed) context for
        self-attention (bytes for the local models, patches for the global one), k slots for a decoder
        byte, the ~bytes_per_patch bytes of its patch for an encoder slot.  Embedding and hash lookups
        and norms are free; backward = 2x forward (``training`` multiplies by 3).
        """
        dE, dD, dG, k = self.dim_local_encoder, self.dim_local_decoder, self.dim_global, self.cross_attn_k
        ps, n = float(bytes_per_patch), int(seq_len_bytes)
        x_e, x_d = self.n_cross_encoder, self.n_cross_decoder

        def block(d: int, heads: int, kv: int) -> int:  # q, o + k, v + SwiGLU w1, w2, w3
            hd = d // heads
            return 2 * d * heads * hd + 2 * d * kv * hd + 3 * d * self.local_ffn_dim(d)

        kv_local = self.n_kv_heads
        per_byte = (self.n_layers_local_encoder * block(dE, self.n_heads_local_encoder,
                                                       kv_local or self.n_heads_local_encoder)
                    + self.n_layers_local_decoder * block(dD, self.n_heads_local_decoder,
                                                         kv_local or self.n_heads_local_decoder)
                    + x_e * 2 * dE * dE + x_d * 2 * dD * dD + self.vocab_size * dD)
        kv_global = self.n_kv_heads_global or self.n_heads_global
        per_patch = (self.n_layers_global * block(dG, self.n_heads_global, kv_global)
                     + (self.patch_dim * dG if self.global_input_projection else 0)
                     + dE * k * dE + x_e * k * 2 * dE * dE + dG * k * dD + x_d * k * 2 * dD * dD)
        local_keys = mean_causal_context(n, self.local_attention_window_len)
        attn_per_byte = 4 * (self.n_layers_local_encoder * dE + self.n_layers_local_decoder * dD) * local_keys
        # cross-attention: a decoder byte sees k slots; an encoder slot sees ~ps bytes (k slots per patch)
        attn_per_byte += 4 * x_d * dD * k + 4 * x_e * dE * k
        attn_per_patch = 4 * self.n_layers_global * dG * mean_causal_context(n / ps, None)
        fwd = 2 * per_byte + 2 * per_patch / ps + attn_per_byte + attn_per_patch / ps
        return fwd * (3.0 if training else 1.0)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BLTConfig:
        d = dict(d)
        d["patcher"] = PatcherConfig(**d.get("patcher", {}))
        if d.get("entropy_model") is not None:
            d["entropy_model"] = TransformerConfig(**d["entropy_model"])
        if "encoder_hash_byte_group_size" in d:
            d["encoder_hash_byte_group_size"] = tuple(d["encoder_hash_byte_group_size"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        _check(not unknown, f"unknown BLTConfig fields: {sorted(unknown)}")
        return cls(**d)


def train_flops_per_step(cfg: Any, bytes_per_patch: Optional[float] = None) -> float:
    """Model FLOPs of one optimizer step of ``cfg`` (a ``TrainConfig``), backward = 2x forward.

    BLT: ``model.flops_per_byte(bytes_per_patch, seq_len)`` (design §11 paper accounting) times the
    bytes per step; ``bytes_per_patch`` defaults to ``model.patcher.patch_size`` (pass the measured
    mean for entropy patching).  Entropy-model training (``train_entropy_model``):
    ``model.entropy_model.flops_per_byte(seq_len, training=True)`` per byte.
    """
    n_bytes = cfg.global_batch_size * cfg.seq_len
    if cfg.train_entropy_model:
        return cfg.model.entropy_model.flops_per_byte(cfg.seq_len, training=True) * n_bytes
    ps = cfg.model.patcher.patch_size if bytes_per_patch is None else bytes_per_patch
    return cfg.resolved_model().flops_per_byte(ps, cfg.seq_len, training=True) * n_bytes


def tiny_blt_config(**overrides: Any) -> BLTConfig:
    """A small configuration for tests and CPU runs."""
    base = dict(
        dim_local_encoder=32, dim_local_decoder=32, n_layers_local_encoder=1, n_layers_local_decoder=2,
        n_heads_local_encoder=2, n_heads_local_decoder=2, dim_global=64, n_layers_global=2,
        n_heads_global=2, cross_attn_k=2, cross_attn_nheads=2, multiple_of=32,
        encoder_hash_byte_group_vocab=97, local_attention_window_len=16, max_encoder_seq_length=256,
        max_seqlen=128, patcher=PatcherConfig(mode="static", patch_size=4, threshold=None),
    )
    base.update(overrides)
    return BLTConfig(**base).validate()


def spec19_blt_config(**overrides: Any) -> BLTConfig:
    """The 27.6M-parameter CPU benchmark model of design §19."""
    base = dict(
        dim_local_encoder=128, dim_local_decoder=128, n_layers_local_encoder=1, n_layers_local_decoder=2,
        n_heads_local_encoder=2, n_heads_local_decoder=2, dim_global=256, n_layers_global=4,
        n_heads_global=4, cross_attn_k=2, cross_attn_nheads=2, multiple_of=256,
        encoder_hash_byte_group_vocab=30000, local_attention_window_len=512,
        max_encoder_seq_length=1024, max_seqlen=512,
        patcher=PatcherConfig(mode="static", patch_size=4, threshold=None),
    )
    base.update(overrides)
    return BLTConfig(**base).validate()


__all__ = ["check_ranges", "INT_FIELD_MINIMUM", "PatcherConfig", "TransformerConfig", "BLTConfig", "ffn_hidden_dim",
           "mean_causal_context", "train_flops_per_step", "tiny_blt_config", "spec19_blt_config"]
