"""Official BLT release checkpoints: ``params.json`` -> configs, ``consolidated.pth`` -> params.

``params.json`` is the official ``TrainArgs`` dump (design §16.1).  :func:`config_from_params_json`
maps it onto :mod:`bltjax.config`; every field of the ``model`` / ``entropy_model`` /
``data.patcher_args`` sections is either

* **mapped** onto a config field (the table in each ``_map_*`` function),
* **required** to have a value bltjax implements (:data:`REQUIRED_VALUES`; anything else is a
  ``ValueError`` naming the field), or
* **ignored** with a reason (:data:`IGNORED_FIELDS`: training, logging, initialisation only, or not
  read by the official model code).

Unknown fields and contradictory combinations are errors, so a checkpoint whose semantics bltjax
would silently change cannot load.

State dicts (design §16.2, official key names, torch ``[out, in]`` weights) are converted to the
bltjax parameter pytree (``notes/params_layout.md``: ``[in, out]`` weights, layers stacked) by a
declarative table of :class:`Entry` rows shared by both directions and by the Hugging Face loader.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable
from typing import Any, Optional, Union

import ml_dtypes
import numpy as np

from bltjax.config import BLTConfig, PatcherConfig, TransformerConfig

Json = dict[str, Any]

# ----------------------------------------------------------------------------------------------
# Field tables
# ----------------------------------------------------------------------------------------------

_INIT = "initialisation only (weights are loaded)"
_TRAIN = "training / systems setting, no effect on the forward pass"
_LOG = "logging only"
_PIF = "only read when patching inside forward (patch_in_forward), which bltjax never does"

#: Fields read and deliberately ignored, with the reason.  Keys are ``section.field``.
IGNORED_FIELDS: dict[str, str] = {
    # --- TrainArgs top level
    "name": _LOG, "dump_dir": _LOG, "seed": _INIT, "debug_dynamo": _TRAIN, "grad_acc_steps": _TRAIN,
    "gc_collect_freq": _TRAIN, "probe_freq": _LOG, "steps": _TRAIN, "max_steps": _TRAIN,
    "optim": _TRAIN, "env": _TRAIN, "checkpoint": _TRAIN, "profiling": _LOG, "logging": _LOG,
    "async_eval_gpus": _TRAIN, "eval": _TRAIN, "eval_on_gpus": _TRAIN,
    "distributed": "training precision / sharding; bltjax loads the stored weights and runs in the "
                   "dtype it is asked for (float32 by default; release weights are bf16)",
    "data": "data pipeline; only data.patcher_args and data.tokenizer_args are read",
    # --- model (ByteLatentTransformerArgs)
    "model.dim": "top-level BaseTransformerArgs width, only used by the FLOPs log formula",
    "model.n_layers": "top-level BaseTransformerArgs depth, only used by the FLOPs log formula",
    "model.n_heads": "top-level heads; the components use n_heads_local_encoder/_decoder/_global",
    "model.seed": _INIT, "model.init_base_std": _INIT, "model.init_std_factor": _INIT,
    "model.init_use_gaussian": _INIT, "model.init_use_depth": _INIT, "model.alpha_depth": _INIT,
    "model.init_device": _INIT, "model.init_dtype": _INIT,
    "model.dropout": "training only (inference runs without dropout)",
    "model.recompute_fc1_out": _TRAIN, "model.recompute_fc3_out": _TRAIN, "model.recompute_attn": _TRAIN,
    "model.custom_bwd": _TRAIN, "model.layer_ckpt": _TRAIN, "model.sequence_parallel": _TRAIN,
    "model.loss_parallel": _TRAIN, "model.fuse_sequence_parallel": _TRAIN, "model.use_fsdp": _TRAIN,
    "model.attn_to_keep": _LOG, "model.full_logging_n_layers": _LOG, "model.log_patch_lengths": _LOG,
    "model.patch_in_forward": "bltjax always patches outside the model (and the official in-forward "
                              "path ignores the threshold, design §3.3)",
    "model.patching_threshold": _PIF, "model.patching_threshold_add": _PIF, "model.monotonicity": _PIF,
    "model.patching_batch_size": _PIF, "model.patching_device": _PIF, "model.max_patch_length": _PIF,
    "model.patching_thresholds_str": _PIF,
    "model.patch_size": "only used by the legacy patching_mode='' path (BOE prefix) and patch_in_forward; "
                        "the patcher's size is data.patcher_args.patch_size",
    "model.max_length": "only sizes learned position embeddings (use_rope=False, unsupported)",
    "model.rope_use_fp32_in_outer_product": "bltjax always builds RoPE tables in float32",
    "model.entropy_model_checkpoint_dir": "path on the training machine; the entropy model is found "
                                          "next to / inside the checkpoint directory",
    "model.encoder_enable_byte_group_hash": "not read by the model; hash tables exist iff "
                                            "encoder_hash_byte_group_size is set",
    "model.dim_token_emb": "overwritten by the official constructors (derived from dim_token)",
    "model.dim_patch_emb": "overwritten by the official constructors",
    "model.cross_attn_use_flex_attention": "only selects the mask container; the official cross-attention "
                                           "requires flex masks, semantics are the same",
    "model.pad_to_max_length": "data pipeline setting, not read by the model",
    "model.tokenize_with_bpe_delimiter": "tokenizer setting; bltjax takes token ids",
    "model.encoder_preds_low_entropy_toks": "not read by the model forward",
    "model.encoder_preds_random_toks": "not read by the model forward",
    "model.ngram_vocab_sizes": "only with encoder_enable_byte_ngrams (required False)",
    "model.encoder_ngram_table_dir": "only with encoder_enable_byte_ngrams (required False)",
    "model.encoder_ngram_to_size_str": "only with encoder_enable_byte_ngrams (required False)",
    "model.share_encoder_decoder_emb": "only changes the decoder token width when dim_token is set "
                                       "(required None) or the local dims differ (an error)",
    # --- entropy_model (LMTransformerArgs)
    "entropy_model.seed": _INIT, "entropy_model.init_base_std": _INIT,
    "entropy_model.init_std_factor": _INIT, "entropy_model.init_device": _INIT,
    "entropy_model.init_dtype": _INIT,
    "entropy_model.rope_use_fp32_in_outer_product": "bltjax always builds RoPE tables in float32",
    # --- data.patcher_args (PatcherArgs)
    "patcher_args.patching_device": _TRAIN, "patcher_args.device": _TRAIN,
    "patcher_args.entropy_model_checkpoint_dir": "path on the training machine; the entropy model is found "
                                                 "next to / inside the checkpoint directory",
    "patcher_args.realtime_patching": "bltjax always patches from the entropy model when it needs to",
    "patcher_args.patching_batch_size": "official entropy batching (rows of 8192); see "
                                        "official_realtime for the chunked context it implies",
    "patcher_args.log_time": _LOG,
}

#: Fields whose value must be one of the listed ones (bltjax implements nothing else).
REQUIRED_VALUES: dict[str, tuple[Any, ...]] = {
    "model.weight_tying": (False,),
    "model.dim_token": (None,),
    "model.use_local_encoder_transformer": (True,),
    "model.encoder_enable_byte_ngrams": (False,),
    "model.encoder_lm_loss": (False,),
    "model.tie_local_encoder_decoder_logits": (False,),
    "model.tie_local_encoder_decoder": (False,),
    "model.use_rope": (True,),
    "model.non_linearity": ("swiglu",),
    "model.norm_type": ("rmsnorm",),
    "model.norm_affine": (True,),
    "model.pre_norm": (True,),
    "model.architecture": ("vanilla",),
    "model.output_size": (-1, None),
    "model.pm_size": (0, None),
    "model.global_local_decoder_residual_layer": (None,),
    "model.conv_kernel_size": (None,),
    "model.entropy_model_is_ngram_model": (False,),
    "model.cross_attn_encoder": (True,),
    "model.cross_attn_decoder": (True,),
    "model.cross_attn_init_by_pooling": (True,),
    "entropy_model.weight_tying": (False,),
    "data.tokenizer_args.name": ("blt",),
}

_MODEL_MAPPED = {
    "vocab_size", "eos_id", "dim_local_encoder", "dim_local_decoder", "dim_global", "n_layers_local_encoder",
    "n_layers_local_decoder", "n_layers_global", "n_heads_local_encoder", "n_heads_local_decoder",
    "n_heads_global", "n_kv_heads", "n_kv_heads_global", "head_dim", "local_attention_window_len",
    "max_encoder_seq_length", "max_seqlen", "multiple_of", "ffn_dim_multiplier", "norm_eps", "rope_theta",
    "attn_impl", "attn_bias_type", "cross_attn_k", "cross_attn_nheads", "cross_attn_all_layers_encoder",
    "cross_attn_all_layers_decoder", "cross_attn_window_encoder", "cross_attn_window_decoder",
    "downsampling_by_pooling", "encoder_hash_byte_group_size", "encoder_hash_byte_group_vocab",
    "encoder_hash_byte_group_nb_functions", "patching_mode",
}
_ENTROPY_MAPPED = {
    "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "vocab_size", "multiple_of", "ffn_dim_multiplier",
    "norm_eps", "rope_theta", "max_seqlen", "sliding_window", "attn_impl", "attn_bias_type", "eos_id",
}
_PATCHER_MAPPED = {"patching_mode", "threshold", "threshold_add", "monotonicity", "patch_size",
                   "max_patch_length"}
_TOP_MAPPED = {"model", "entropy_model", "train_entropy_model"}

#: What the official realtime entropy loader (``load_entropy_model``, design §2) uses regardless of
#: params.json: only dim, n_layers, n_heads, max_seqlen, ffn_dim_multiplier, vocab_size are read.
REALTIME_ENTROPY_OVERRIDES: dict[str, Any] = dict(
    sliding_window=512, doc_mask=True, rope_theta=10000.0, norm_eps=1e-5, multiple_of=256,
    n_kv_heads=None, head_dim=None)
#: The official realtime patcher runs the entropy model in bf16 on 8192-byte chunks of the flattened
#: batch (design §2 calculate_entropies).
REALTIME_PATCHER_OVERRIDES: dict[str, Any] = dict(entropy_chunk_len=8192, entropy_flatten_rows=True,
                                                  entropy_dtype="bfloat16")


# ----------------------------------------------------------------------------------------------
# params.json -> configs
# ----------------------------------------------------------------------------------------------


def _check_section(section: Json, name: str, mapped: set[str]) -> None:
    """Unknown fields -> error; required-value fields with other values -> error."""
    known = mapped | {k.split(".", 1)[1] for k in IGNORED_FIELDS if k.startswith(name + ".")}
    known |= {k.rsplit(".", 1)[1] for k in REQUIRED_VALUES if k.startswith(name + ".")}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"params.json: unknown field(s) {', '.join(name + '.' + u for u in unknown)}; "
                         f"bltjax does not know their semantics (see bltjax.io.release field tables)")
    for key, allowed in REQUIRED_VALUES.items():
        sec, field = key.rsplit(".", 1)
        if sec == name and field in section and section[field] not in allowed:
            raise ValueError(f"params.json: {key}={section[field]!r} is not supported by bltjax "
                             f"(supported: {', '.join(repr(a) for a in allowed)})")


def _get(section: Json, field: str, default: Any) -> Any:
    value = section.get(field, default)
    return default if value is None and default is not None else value


def _local_masks(attn_impl: Optional[str], name: str) -> bool:
    """True for the xformers path (window + EOS document masks), False for the plain-causal fallbacks."""
    if attn_impl in (None, "xformers"):
        return True
    if attn_impl in ("sdpa", "flex_attention"):
        warnings.warn(f"params.json: {name}.attn_impl={attn_impl!r}: the official code then uses plain "
                      f"causal self-attention everywhere (no sliding window, no EOS document masks); "
                      f"bltjax reproduces that", stacklevel=3)
        return False
    raise ValueError(f"params.json: {name}.attn_impl={attn_impl!r} is not supported "
                     f"(xformers, sdpa or flex_attention)")


def _pooling(value: Optional[str]) -> str:
    table = {"max": "max", "avg": "avg", "mean": "avg", "min": "min"}
    if value not in table:
        raise ValueError(f"params.json: model.downsampling_by_pooling={value!r} is not supported with "
                         f"cross-attention pooling init (one of max, avg/mean, min)")
    return table[value]


def _hash_sizes(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(int(x) for x in value.split(",") if x)
    return tuple(int(x) for x in value)


def _map_model(m: Json, patcher: PatcherConfig) -> BLTConfig:
    """ByteLatentTransformerArgs -> BLTConfig (design §4-§10, §20.10)."""
    _check_section(m, "model", _MODEL_MAPPED)
    d_e, d_d, d_g = m["dim_local_encoder"], m["dim_local_decoder"], m["dim_global"]
    if d_e != d_d:
        raise ValueError(f"params.json: contradictory model.dim_local_decoder={d_d} != "
                         f"model.dim_local_encoder={d_e} (the decoder reads the encoder's byte states)")
    heads = {"local_encoder": (d_e, m.get("n_heads_local_encoder", 8)),
             "local_decoder": (d_d, m.get("n_heads_local_decoder", 8)),
             "global": (d_g, m.get("n_heads_global", 8))}
    if m.get("head_dim") is not None:
        bad = [k for k, (d, h) in heads.items() if d // h != m["head_dim"]]
        if bad:
            raise ValueError(f"params.json: model.head_dim={m['head_dim']} differs from dim // n_heads for "
                             f"{', '.join(bad)}; bltjax requires head_dim = dim // n_heads")
    mode = m.get("patching_mode")
    if mode == "" or mode is None:
        raise ValueError(f"params.json: model.patching_mode={mode!r} (legacy MegaByte path with BOE-prefixed "
                         f"fixed patches) is not supported")
    if mode != patcher.mode:
        raise ValueError(f"params.json: contradictory model.patching_mode={mode!r} and "
                         f"data.patcher_args.patching_mode={patcher.mode!r}")
    for field in ("cross_attn_k", "cross_attn_nheads"):
        if m.get(field) is None:
            raise ValueError(f"params.json: model.{field} must be set for cross-attention BLT models")
    local_masks = _local_masks(m.get("attn_impl"), "model")
    bias = m.get("attn_bias_type") or "causal"
    if bias not in ("causal", "block_causal"):
        raise ValueError(f"params.json: model.attn_bias_type={bias!r} (the global transformer's mask) is "
                         f"not supported (causal or block_causal)")
    if not local_masks:
        bias = "causal"
    window = m.get("local_attention_window_len")
    if local_masks and window is None:
        raise ValueError("params.json: model.local_attention_window_len must be set with attn_impl=xformers "
                         "(the official local_block_causal mask asserts a window)")
    if m.get("vocab_size", 260) != 260:
        raise ValueError(f"params.json: model.vocab_size={m.get('vocab_size')} is not supported (260)")
    return BLTConfig(
        vocab_size=260,
        eos_id=_get(m, "eos_id", 2),
        dim_local_encoder=d_e, dim_local_decoder=d_d, dim_global=d_g,
        n_layers_local_encoder=m["n_layers_local_encoder"], n_layers_local_decoder=m["n_layers_local_decoder"],
        n_layers_global=m["n_layers_global"],
        n_heads_local_encoder=heads["local_encoder"][1], n_heads_local_decoder=heads["local_decoder"][1],
        n_heads_global=heads["global"][1],
        n_kv_heads=m.get("n_kv_heads"), n_kv_heads_global=m.get("n_kv_heads_global"),
        local_attention_window_len=window if local_masks else None,
        local_doc_mask=local_masks,
        max_encoder_seq_length=m["max_encoder_seq_length"],
        global_attn=bias,
        max_seqlen=m["max_seqlen"],
        multiple_of=_get(m, "multiple_of", 256),
        ffn_dim_multiplier=m.get("ffn_dim_multiplier", 1.0),
        norm_eps=_get(m, "norm_eps", 1e-5),
        rope_theta=_get(m, "rope_theta", 10000.0),
        cross_attn_encoder=True, cross_attn_decoder=True,
        cross_attn_k=m["cross_attn_k"], cross_attn_nheads=m["cross_attn_nheads"],
        cross_attn_all_layers_encoder=bool(m.get("cross_attn_all_layers_encoder", False)),
        cross_attn_all_layers_decoder=bool(m.get("cross_attn_all_layers_decoder", False)),
        cross_attn_window_encoder=m.get("cross_attn_window_encoder"),
        cross_attn_window_decoder=m.get("cross_attn_window_decoder"),
        cross_attn_init_by_pooling=True,
        downsampling_by_pooling=_pooling(m.get("downsampling_by_pooling")),
        encoder_hash_byte_group_size=_hash_sizes(m.get("encoder_hash_byte_group_size")),
        encoder_hash_byte_group_vocab=_get(m, "encoder_hash_byte_group_vocab", 30000),
        encoder_hash_byte_group_nb_functions=_get(m, "encoder_hash_byte_group_nb_functions", 3),
        patcher=patcher,
    )


def _map_entropy(e: Json, *, realtime_loader: bool = False) -> TransformerConfig:
    """LMTransformerArgs -> TransformerConfig (design §2)."""
    _check_section(e, "entropy_model", _ENTROPY_MAPPED)
    local_masks = _local_masks(e.get("attn_impl"), "entropy_model")
    bias = e.get("attn_bias_type") or "causal"
    if bias not in ("causal", "block_causal", "local_block_causal"):
        raise ValueError(f"params.json: entropy_model.attn_bias_type={bias!r} is not supported")
    window = e.get("sliding_window") if bias == "local_block_causal" else None
    if bias == "local_block_causal" and window is None:
        raise ValueError("params.json: entropy_model.attn_bias_type='local_block_causal' needs "
                         "entropy_model.sliding_window")
    if _get(e, "vocab_size", 260) != 260:
        raise ValueError(f"params.json: entropy_model.vocab_size={e.get('vocab_size')} is not supported (260)")
    cfg = TransformerConfig(
        dim=e["dim"], n_layers=e["n_layers"], n_heads=e["n_heads"], n_kv_heads=e.get("n_kv_heads"),
        head_dim=e.get("head_dim"), vocab_size=260, multiple_of=_get(e, "multiple_of", 256),
        ffn_dim_multiplier=e.get("ffn_dim_multiplier"), norm_eps=_get(e, "norm_eps", 1e-5),
        rope_theta=_get(e, "rope_theta", 10000.0), max_seqlen=_get(e, "max_seqlen", 1024),
        sliding_window=window if local_masks else None,
        doc_mask=local_masks and bias != "causal", eos_id=_get(e, "eos_id", 2),
    )
    official = dataclasses.replace(cfg, **REALTIME_ENTROPY_OVERRIDES)
    if realtime_loader:
        return official.validate()
    differ = [f"{k}={getattr(cfg, k)!r} (official loader: {getattr(official, k)!r})"
              for k in REALTIME_ENTROPY_OVERRIDES if getattr(cfg, k) != getattr(official, k)]
    if differ:
        warnings.warn("entropy model params.json differs from what the official realtime loader hard-codes: "
                      + "; ".join(differ) + ". bltjax follows params.json (pass official_realtime=True to "
                      "reproduce the official loader)", stacklevel=3)
    return cfg.validate()


def patcher_config_from_params_json(d: Json, *, official_realtime: bool = False) -> PatcherConfig:
    """``data.patcher_args`` -> PatcherConfig (design §3.3: inference reads the threshold from here)."""
    data = d.get("data") or {}
    tok = data.get("tokenizer_args") or {}
    if "name" in tok and tok["name"] not in REQUIRED_VALUES["data.tokenizer_args.name"]:
        raise ValueError(f"params.json: data.tokenizer_args.name={tok['name']!r} is not supported (blt)")
    p = data.get("patcher_args") or {}
    _check_section(p, "patcher_args", _PATCHER_MAPPED)
    mode = _get(p, "patching_mode", "entropy")
    if mode not in ("entropy", "space", "static", "byte", "bpe"):
        raise ValueError(f"params.json: data.patcher_args.patching_mode={mode!r} is not supported")
    kwargs: dict[str, Any] = dict(
        mode=mode, threshold=p.get("threshold", 1.335442066192627), threshold_add=p.get("threshold_add"),
        monotonicity=bool(p.get("monotonicity", False)), patch_size=float(_get(p, "patch_size", 4.5)),
        max_patch_length=p.get("max_patch_length"))
    if official_realtime:
        kwargs.update(REALTIME_PATCHER_OVERRIDES)
    return PatcherConfig(**kwargs).validate()


def config_from_params_json(d: Json, *, official_realtime: bool = False
                            ) -> Union[BLTConfig, TransformerConfig]:
    """Map an official ``params.json`` (TrainArgs) onto a bltjax config.

    Returns a :class:`BLTConfig` (``entropy_model`` left None: it lives in its own checkpoint) or, for
    an entropy-model checkpoint (``train_entropy_model: true``), a :class:`TransformerConfig`.
    ``official_realtime=True`` reproduces the official realtime patching path: the entropy-model
    settings its loader hard-codes (:data:`REALTIME_ENTROPY_OVERRIDES`) and bf16 entropies on
    8192-byte chunks of the flattened batch (:data:`REALTIME_PATCHER_OVERRIDES`).  The default follows
    params.json and computes entropies per row in float32 (what the fixtures record).
    """
    if not isinstance(d, dict):
        raise ValueError("params.json must hold a JSON object")
    unknown = sorted(set(d) - _TOP_MAPPED - set(IGNORED_FIELDS))
    if unknown:
        raise ValueError(f"params.json: unknown top-level field(s) {unknown}")
    if d.get("train_entropy_model"):
        if d.get("entropy_model") is None:
            raise ValueError("params.json: train_entropy_model is true but entropy_model is null")
        return _map_entropy(d["entropy_model"], realtime_loader=official_realtime)
    if d.get("model") is None:
        raise ValueError("params.json: model is null (and train_entropy_model is false): nothing to load")
    patcher = patcher_config_from_params_json(d, official_realtime=official_realtime)
    return _map_model(d["model"], patcher).validate()


def entropy_config_from_params_json(d: Json, *, official_realtime: bool = False) -> TransformerConfig:
    """The entropy model's config from its own ``params.json`` (``train_entropy_model: true``)."""
    cfg = config_from_params_json(d, official_realtime=official_realtime)
    if not isinstance(cfg, TransformerConfig):
        raise ValueError("params.json describes a BLT model, not an entropy model "
                         "(train_entropy_model is false)")
    return cfg


# ----------------------------------------------------------------------------------------------
# State dicts <-> params
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Entry:
    """One params leaf and the torch tensors it is made of.

    ``keys`` holds one torch name per stacked layer (or a single name); ``shape`` is the bltjax
    shape (layer axis first when ``stacked``); ``transpose`` swaps the last two axes of each torch
    tensor (torch linear ``[out, in]`` -> ``[in, out]``).
    """

    path: tuple[str, ...]
    keys: tuple[str, ...]
    shape: tuple[int, ...]
    transpose: bool = False
    stacked: bool = False

    @property
    def torch_shape(self) -> tuple[int, ...]:
        per = self.shape[1:] if self.stacked else self.shape
        return tuple(reversed(per)) if self.transpose else per


def block_entries(path: tuple[str, ...], prefix: str, n_layers: int, dim: int, n_heads: int,
                  n_kv_heads: int, head_dim: int, ffn_dim: int) -> list[Entry]:
    """A stack of pre-norm blocks: ``{prefix}.{i}.attention.wq.weight`` ... -> ``path + (name,)``."""
    L, q, kv = n_layers, n_heads * head_dim, n_kv_heads * head_dim
    rows = [("attention_norm", "attention_norm", (dim,), False),
            ("wq", "attention.wq", (dim, q), True), ("wk", "attention.wk", (dim, kv), True),
            ("wv", "attention.wv", (dim, kv), True), ("wo", "attention.wo", (q, dim), True),
            ("ffn_norm", "ffn_norm", (dim,), False),
            ("w1", "feed_forward.w1", (dim, ffn_dim), True), ("w3", "feed_forward.w3", (dim, ffn_dim), True),
            ("w2", "feed_forward.w2", (ffn_dim, dim), True)]
    return [Entry(path + (name,), tuple(f"{prefix}.{i}.{tname}.weight" for i in range(L)), (L,) + shape,
                  transpose, stacked=True) for name, tname, shape, transpose in rows]


def cross_entries(path: tuple[str, ...], prefix: str, n_layers: int, dim: int) -> list[Entry]:
    """Cross-attention stack: ``{prefix}.{c}.cross_attn_norm_q.weight`` ... (heads * head_dim = dim)."""
    rows = [("norm_q", "cross_attn_norm_q", (dim,), False), ("norm_kv", "cross_attn_norm_kv", (dim,), False),
            ("wq", "wq", (dim, dim), True), ("wk", "wk", (dim, dim), True), ("wv", "wv", (dim, dim), True),
            ("wo", "wo", (dim, dim), True)]
    return [Entry(path + (name,), tuple(f"{prefix}.{c}.{tname}.weight" for c in range(n_layers)),
                  (n_layers,) + shape, transpose, stacked=True) for name, tname, shape, transpose in rows]


def blt_entries(cfg: BLTConfig) -> list[Entry]:
    """Every BLT parameter with its official state-dict names (design §16.2)."""
    dE, dD, dG, k, V = cfg.dim_local_encoder, cfg.dim_local_decoder, cfg.dim_global, cfg.cross_attn_k, cfg.vocab_size
    T = cfg.n_hash_tables
    kv_l = cfg.n_kv_heads
    out = [
        Entry(("tok_embeddings",), ("local_encoder.tok_embeddings.weight",), (V, dE)),
        Entry(("hash_embeddings",), tuple(f"encoder_hash_tok_embedding.{t}.weight" for t in range(T)),
              (T, cfg.encoder_hash_byte_group_vocab, dE), stacked=True),
    ]
    out += block_entries(("encoder", "layers"), "local_encoder.layers", cfg.n_layers_local_encoder, dE,
                         cfg.n_heads_local_encoder, kv_l or cfg.n_heads_local_encoder,
                         dE // cfg.n_heads_local_encoder, cfg.local_ffn_dim(dE))
    out.append(Entry(("encoder", "patch_projection"), ("local_encoder.patch_embedding_projection.weight",),
                     (dE, k * dE), transpose=True))
    out += cross_entries(("encoder", "cross"), "local_encoder.cross_attn_layers", cfg.n_cross_encoder, dE)
    if cfg.global_input_projection:
        out.append(Entry(("global", "input_projection"), ("global_transformer.token_embedding_projection.weight",),
                         (cfg.patch_dim, dG), transpose=True))
    out += block_entries(("global", "layers"), "global_transformer.layers", cfg.n_layers_global, dG,
                         cfg.n_heads_global, cfg.n_kv_heads_global or cfg.n_heads_global,
                         dG // cfg.n_heads_global, cfg.local_ffn_dim(dG))
    out.append(Entry(("decoder", "patch_projection"), ("local_decoder.patch_embedding_projection.weight",),
                     (dG, k * dD), transpose=True))
    out += cross_entries(("decoder", "cross"), "local_decoder.cross_attn_layers", cfg.n_cross_decoder, dD)
    out += block_entries(("decoder", "layers"), "local_decoder.layers", cfg.n_layers_local_decoder, dD,
                         cfg.n_heads_local_decoder, kv_l or cfg.n_heads_local_decoder,
                         dD // cfg.n_heads_local_decoder, cfg.local_ffn_dim(dD))
    out += [Entry(("decoder", "norm"), ("local_decoder.norm.weight",), (dD,)),
            Entry(("decoder", "output"), ("local_decoder.output.weight",), (dD, V), transpose=True)]
    return out


def entropy_entries(ecfg: TransformerConfig) -> list[Entry]:
    """Every entropy-model parameter with its official (``LMTransformer``) names (design §16.2)."""
    d, V = ecfg.dim, ecfg.vocab_size
    out = [Entry(("tok_embeddings",), ("tok_embeddings.weight",), (V, d))]
    out += block_entries(("layers",), "layers", ecfg.n_layers, d, ecfg.n_heads, ecfg.kv_heads, ecfg.hdim,
                         ecfg.ffn_dim)
    out += [Entry(("norm",), ("norm.weight",), (d,)),
            Entry(("output",), ("output.weight",), (d, V), transpose=True)]
    return out


#: Non-persistent buffers that some checkpoints carry anyway (RoPE tables); recomputed, so dropped.
_DROPPED_SUFFIXES = (".freqs_cis", "rope.freqs_cis")


def _np_dtype(dtype: Any) -> np.dtype:
    if dtype in ("bfloat16", "bf16"):
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def _fmt(items: Iterable[str], limit: int = 12) -> str:
    items = sorted(items)
    more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def check_state_dict(sd: dict[str, np.ndarray], entries: list[Entry], what: str) -> None:
    """Missing keys, unexpected keys and shape mismatches -> one ValueError listing them all."""
    expected = {key: e.torch_shape for e in entries for key in e.keys}
    present = {k for k in sd if not k.endswith(_DROPPED_SUFFIXES)}
    missing, unexpected = set(expected) - present, present - set(expected)
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs config {expected[k]}"
              for k in sorted(set(expected) & present) if tuple(sd[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_fmt(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_fmt(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): {'; '.join(shapes[:12])}")
    if problems:
        raise ValueError(f"{what} state dict does not match its config:\n  " + "\n  ".join(problems))


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _get_path(tree: dict, path: tuple[str, ...]) -> Any:
    for p in path:
        if not isinstance(tree, dict) or p not in tree:
            raise ValueError(f"params are missing {'/'.join(path)}")
        tree = tree[p]
    return tree


def tree_from_state_dict(sd: dict[str, np.ndarray], entries: list[Entry], what: str,
                         dtype: Any = np.float32) -> dict:
    """Build the params pytree (numpy arrays of ``dtype``) from a checked state dict."""
    check_state_dict(sd, entries, what)
    dt = _np_dtype(dtype)
    tree: dict = {}
    for e in entries:
        parts = [np.asarray(sd[k]) for k in e.keys]
        parts = [p.T if e.transpose else p for p in parts]
        if e.stacked:
            arr = np.stack(parts) if parts else np.zeros(e.shape, dt)
        else:
            arr = parts[0]
        _set(tree, e.path, np.ascontiguousarray(arr.astype(dt)))
    return tree


def state_dict_from_tree(params: dict, entries: list[Entry], what: str,
                         dtype: Optional[Any] = None) -> dict[str, np.ndarray]:
    """The inverse: a params pytree -> official ``[out, in]`` state dict (shapes checked)."""
    sd: dict[str, np.ndarray] = {}
    for e in entries:
        arr = np.asarray(_get_path(params, e.path))
        if tuple(arr.shape) != e.shape:
            raise ValueError(f"{what} params {'/'.join(e.path)} has shape {tuple(arr.shape)}, "
                             f"config expects {e.shape}")
        if dtype is not None:
            arr = arr.astype(_np_dtype(dtype))
        layers = list(arr) if e.stacked else [arr]
        for key, layer in zip(e.keys, layers):
            sd[key] = np.ascontiguousarray(layer.T if e.transpose else layer)
    return sd


def state_dict_to_params(sd: dict[str, np.ndarray], cfg: Union[BLTConfig, TransformerConfig],
                         dtype: Any = np.float32) -> dict:
    """Official state dict -> bltjax params (numpy arrays).  BLTConfig or entropy TransformerConfig."""
    if isinstance(cfg, TransformerConfig):
        return tree_from_state_dict(sd, entropy_entries(cfg), "entropy model", dtype)
    return tree_from_state_dict(sd, blt_entries(cfg), "BLT", dtype)


def params_to_state_dict(params: dict, cfg: Union[BLTConfig, TransformerConfig],
                         dtype: Optional[Any] = None) -> dict[str, np.ndarray]:
    """bltjax params -> official state dict (for round trips and exports)."""
    if isinstance(cfg, TransformerConfig):
        return state_dict_from_tree(params, entropy_entries(cfg), "entropy model", dtype)
    return state_dict_from_tree(params, blt_entries(cfg), "BLT", dtype)


def entropy_state_dict_to_params(sd: dict[str, np.ndarray], ecfg: TransformerConfig,
                                 dtype: Any = np.float32) -> dict:
    return tree_from_state_dict(sd, entropy_entries(ecfg), "entropy model", dtype)


def entropy_params_to_state_dict(params: dict, ecfg: TransformerConfig,
                                 dtype: Optional[Any] = None) -> dict[str, np.ndarray]:
    return state_dict_from_tree(params, entropy_entries(ecfg), "entropy model", dtype)


__all__ = ["IGNORED_FIELDS", "REQUIRED_VALUES", "REALTIME_ENTROPY_OVERRIDES", "REALTIME_PATCHER_OVERRIDES",
           "config_from_params_json", "entropy_config_from_params_json", "patcher_config_from_params_json",
           "Entry", "block_entries", "cross_entries", "blt_entries", "entropy_entries", "check_state_dict",
           "tree_from_state_dict", "state_dict_from_tree", "state_dict_to_params", "params_to_state_dict",
           "entropy_state_dict_to_params", "entropy_params_to_state_dict"]
