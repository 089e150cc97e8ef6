"""Hugging Face ``transformers`` BLT checkpoints (``model_type: "blt"``, design §16.3).

A directory with ``config.json`` (``BltConfig`` with ``encoder_config`` / ``decoder_config`` /
``global_config`` / ``patcher_config`` sub-configs) and ``*.safetensors``.  Keys are the official
ones renamed component by component (:data:`OFFICIAL_TO_HF`), prefixed ``model.``; the hash tables are
fused into one ``[n_tables * V_h, d_E]`` matrix; the decoder head is the top-level ``lm_head``; the
entropy model lives under ``model.patcher.``.

The HF port differs semantically from the official code; :func:`config_from_hf` expresses each
difference as a config flag instead of a code path:

* no EOS document masks anywhere -> ``BLTConfig.local_doc_mask=False``, ``global_attn="causal"``,
  ``TransformerConfig.doc_mask=False`` for the patcher;
* the patcher sees each row whole (no 8192 chunks, no cross-row flattening) ->
  ``PatcherConfig.entropy_chunk_len=None``, ``entropy_flatten_rows=False``;
* patch lengths sum to N, not N + 1 -> ``PatcherConfig.patches_sum_to_n=True`` (:func:`hf_patch_lengths`);
* cross-attention heads = the local models' heads, pooling is always max, exact-patch cross masks.
"""

from __future__ import annotations

import json
import pathlib
import warnings
from typing import Any, Optional

import numpy as np

from bltjax.config import BLTConfig, PatcherConfig, TransformerConfig, ffn_hidden_dim
from bltjax.io.release import blt_entries, entropy_entries, state_dict_from_tree, tree_from_state_dict
from bltjax.io.safetensors_np import load_safetensors_dir

Json = dict[str, Any]

#: Official state-dict name components -> HF ones (a bijection on dotted components).
OFFICIAL_TO_HF: dict[str, str] = {
    "attention": "self_attn", "feed_forward": "mlp", "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm", "tok_embeddings": "embed_tokens",
    "cross_attn_norm_q": "q_norm", "cross_attn_norm_kv": "k_norm",
    "w1": "gate_proj", "w2": "down_proj", "w3": "up_proj",
    "wq": "q_proj", "wk": "k_proj", "wv": "v_proj", "wo": "o_proj", "output": "lm_head",
}
HF_TO_OFFICIAL: dict[str, str] = {v: k for k, v in OFFICIAL_TO_HF.items()}
HF_HASH_KEY = "model.encoder_hash_tok_embedding.weight"
_HF_DECODER_HEAD = "lm_head.weight"
_PATCHER_PREFIX = "model.patcher."

# transformers 5.x class defaults, used for fields a config.json leaves out.
_DEFAULTS: dict[str, Json] = {
    "top": dict(vocab_size=260, max_position_embeddings=4096, patch_in_forward=True, patch_size=4,
                patching_mode="entropy", patching_threshold=1.335442066192627, max_patch_length=None,
                local_attention_window_len=512, cross_attn_k=2, encoder_hash_byte_group_size=None,
                encoder_hash_byte_group_vocab=500002, encoder_hash_byte_group_nb_functions=1,
                tie_word_embeddings=False),
    "encoder_config": dict(hidden_size=1024, num_attention_heads=16, num_key_value_heads=None,
                           num_hidden_layers=1, rms_norm_eps=1e-5, max_position_embeddings=24576,
                           intermediate_size=None, cross_attn_all_layers=False, cross_attn_k=2,
                           hidden_size_global=2048, hidden_act="silu", vocab_size=260),
    "decoder_config": dict(hidden_size=1024, num_attention_heads=16, num_key_value_heads=None,
                           num_hidden_layers=9, rms_norm_eps=1e-5, max_position_embeddings=24576,
                           intermediate_size=2816, cross_attn_all_layers=True, cross_attn_k=2,
                           hidden_size_global=2048, hidden_act="silu", vocab_size=260),
    "global_config": dict(hidden_size=2048, num_attention_heads=16, num_key_value_heads=None,
                          num_hidden_layers=25, rms_norm_eps=1e-5, max_position_embeddings=4096,
                          intermediate_size=5632, hidden_act="silu"),
    "patcher_config": dict(hidden_size=768, num_hidden_layers=14, num_attention_heads=12,
                           num_key_value_heads=None, max_position_embeddings=8192, rms_norm_eps=1e-5,
                           intermediate_size=2048, sliding_window=512, vocab_size=260, hidden_act="silu"),
}
_DEFAULT_THETA = {"top": 500000.0, "encoder_config": 500000.0, "decoder_config": 500000.0,
                  "global_config": 500000.0, "patcher_config": 10000.0}

# Fields with no effect on inference outputs (or re-derived by bltjax), per config level.
_GENERIC_IGNORED = {
    "architectures", "model_type", "transformers_version", "dtype", "torch_dtype", "use_cache",
    "pad_token_id", "bos_token_id", "eos_token_id", "initializer_range", "_name_or_path", "dropout",
    "output_hidden_states", "output_attentions", "return_dict", "is_encoder_decoder", "head_dim",
    "encoder_cross_output_size", "patching_batch_size", "patching_device", "_attn_implementation_autoset",
    "chunk_size_feed_forward", "problem_type", "tokenizer_class", "auto_map", "use_return_dict",
}
_HANDLED = {
    "top": set(_DEFAULTS["top"]) | {"rope_parameters", "rope_theta", "rope_scaling", "encoder_config",
                                    "decoder_config", "global_config", "patcher_config"},
    **{name: set(d) | {"rope_parameters", "rope_theta", "rope_scaling", "norm_eps", "tie_word_embeddings"}
       for name, d in _DEFAULTS.items() if name != "top"},
}
_HANDLED["encoder_config"] |= {"sliding_window"}


# ----------------------------------------------------------------------------------------------
# config.json -> BLTConfig
# ----------------------------------------------------------------------------------------------


def _section(d: Json, name: str) -> Json:
    raw = d if name == "top" else (d.get(name) or {})
    unknown = sorted(set(raw) - _HANDLED[name] - _GENERIC_IGNORED)
    if unknown:
        warnings.warn(f"HF config.json {name}: ignoring unknown field(s) {unknown}", stacklevel=3)
    merged = dict(_DEFAULTS[name])
    merged.update({k: v for k, v in raw.items()})
    if "rms_norm_eps" not in raw and "norm_eps" in raw:  # older converted configs
        merged["rms_norm_eps"] = raw["norm_eps"]
    merged["rope_theta"] = _rope_theta(raw, name)
    if merged.get("hidden_act", "silu") != "silu":
        raise ValueError(f"HF config.json {name}.hidden_act={merged['hidden_act']!r} is not supported (silu)")
    if merged.get("tie_word_embeddings"):
        raise ValueError(f"HF config.json {name}.tie_word_embeddings=true is not supported")
    if name != "top" and merged.get("vocab_size", 260) != 260:
        raise ValueError(f"HF config.json {name}.vocab_size={merged['vocab_size']} is not supported (260)")
    return merged


def _rope_theta(raw: Json, name: str) -> float:
    rope = raw.get("rope_parameters") or {}
    scaling = raw.get("rope_scaling")
    rope_type = rope.get("rope_type", (scaling or {}).get("rope_type", "default"))
    if rope_type != "default":
        raise ValueError(f"HF config.json {name}: rope_type={rope_type!r} is not supported (default)")
    return float(rope.get("rope_theta", raw.get("rope_theta", _DEFAULT_THETA[name])))


def _ffn_rule(pairs: list[tuple[int, int]], where: str) -> int:
    """A ``multiple_of`` for which the official SwiGLU rule (multiplier 1.0) gives every (dim, hidden)."""
    candidates = [256, 128, 64, 32, 16, 8, 4, 2, 1]
    for m in candidates:
        if all(ffn_hidden_dim(d, m, 1.0) == h for d, h in pairs):
            return m
    raise ValueError(f"HF config.json {where}: intermediate sizes {[h for _, h in pairs]} for hidden sizes "
                     f"{[d for d, _ in pairs]} do not follow one SwiGLU rounding rule "
                     f"(multiple_of * ceil(int(8 d / 3) / multiple_of)); bltjax cannot express them")


def _intermediate(sec: Json) -> int:
    return sec["intermediate_size"] or int(8 * sec["hidden_size"] / 3)


def _kv(sec: Json) -> Optional[int]:
    kv = sec.get("num_key_value_heads")
    return None if kv in (None, sec["num_attention_heads"]) else kv


def _patcher_from_hf(top: Json, pat: Optional[Json]) -> tuple[PatcherConfig, Optional[TransformerConfig]]:
    """The patching behaviour of ``BltModel.forward`` when it is not given patch lengths."""
    if not (top["patch_in_forward"] and top["patching_mode"] == "entropy"):
        if top["patching_mode"] not in ("entropy", "byte"):
            warnings.warn(f"HF config.json patching_mode={top['patching_mode']!r}: the HF model only "
                          f"implements entropy patching and otherwise uses 1-byte patches; so does bltjax",
                          stacklevel=3)
        return PatcherConfig(mode="byte", threshold=None, max_patch_length=top["max_patch_length"]), None
    if top["patching_threshold"] is None or top["patch_size"] is None:
        raise ValueError("HF config.json: entropy patching needs patching_threshold and patch_size "
                         "(the HF patcher has no fixed-count mode)")
    assert pat is not None
    ecfg = TransformerConfig(
        dim=pat["hidden_size"], n_layers=pat["num_hidden_layers"], n_heads=pat["num_attention_heads"],
        n_kv_heads=_kv(pat), vocab_size=260,
        multiple_of=_ffn_rule([(pat["hidden_size"], _intermediate(pat))], "patcher_config"),
        ffn_dim_multiplier=1.0, norm_eps=pat["rms_norm_eps"], rope_theta=pat["rope_theta"],
        max_seqlen=pat["max_position_embeddings"], sliding_window=pat.get("sliding_window"), doc_mask=False,
    ).validate()
    pcfg = PatcherConfig(mode="entropy", threshold=float(top["patching_threshold"]),
                         patch_size=float(top["patch_size"]), max_patch_length=top["max_patch_length"],
                         entropy_chunk_len=None, entropy_flatten_rows=False, patches_sum_to_n=True)
    return pcfg, ecfg


def config_from_hf(d: Json) -> BLTConfig:
    """Map a HF ``BltConfig`` ``config.json`` onto :class:`BLTConfig` (``entropy_model`` set when the
    checkpoint patches with its entropy model)."""
    if d.get("model_type") != "blt":
        raise ValueError(f"HF config.json: model_type={d.get('model_type')!r}, expected 'blt'")
    top = _section(d, "top")
    enc, dec, glob = (_section(d, n) for n in ("encoder_config", "decoder_config", "global_config"))
    problems = []
    if enc["hidden_size"] != dec["hidden_size"]:
        problems.append(f"encoder hidden_size {enc['hidden_size']} != decoder hidden_size {dec['hidden_size']}")
    if enc["num_attention_heads"] != dec["num_attention_heads"]:
        problems.append("encoder and decoder num_attention_heads differ (HF uses them as the cross-attention "
                        "heads; bltjax has one cross_attn_nheads)")
    for name, sec in (("encoder_config", enc), ("decoder_config", dec)):
        if _kv(sec) is not None:
            problems.append(f"{name}.num_key_value_heads={sec['num_key_value_heads']} < num_attention_heads "
                            f"(HF would also use GQA in cross-attention, which bltjax does not implement)")
        if sec["cross_attn_k"] != top["cross_attn_k"]:
            problems.append(f"{name}.cross_attn_k={sec['cross_attn_k']} != cross_attn_k={top['cross_attn_k']}")
        if sec["hidden_size_global"] != glob["hidden_size"]:
            problems.append(f"{name}.hidden_size_global={sec['hidden_size_global']} != "
                            f"global_config.hidden_size={glob['hidden_size']}")
    for field in ("rms_norm_eps", "rope_theta"):
        values = {enc[field], dec[field], glob[field]}
        if len(values) > 1:
            problems.append(f"{field} differs between encoder/decoder/global ({sorted(values)}); bltjax shares one")
    if top["vocab_size"] != 260:
        problems.append(f"vocab_size={top['vocab_size']} (bltjax: 260)")
    if problems:
        raise ValueError("HF config.json cannot be expressed as a bltjax BLTConfig:\n  " + "\n  ".join(problems))
    multiple_of = _ffn_rule([(enc["hidden_size"], _intermediate(enc)), (dec["hidden_size"], _intermediate(dec)),
                             (glob["hidden_size"], _intermediate(glob))], "encoder/decoder/global")
    pat = _section(d, "patcher_config") if top["patch_in_forward"] else None
    pcfg, ecfg = _patcher_from_hf(top, pat)
    sizes = top["encoder_hash_byte_group_size"] or [3, 4, 5, 6, 7, 8]
    return BLTConfig(
        vocab_size=260, eos_id=2,
        dim_local_encoder=enc["hidden_size"], dim_local_decoder=dec["hidden_size"], dim_global=glob["hidden_size"],
        n_layers_local_encoder=enc["num_hidden_layers"], n_layers_local_decoder=dec["num_hidden_layers"],
        n_layers_global=glob["num_hidden_layers"],
        n_heads_local_encoder=enc["num_attention_heads"], n_heads_local_decoder=dec["num_attention_heads"],
        n_heads_global=glob["num_attention_heads"], n_kv_heads=None, n_kv_heads_global=_kv(glob),
        local_attention_window_len=top["local_attention_window_len"], local_doc_mask=False,
        max_encoder_seq_length=min(enc["max_position_embeddings"], dec["max_position_embeddings"]),
        global_attn="causal", max_seqlen=glob["max_position_embeddings"],
        multiple_of=multiple_of, ffn_dim_multiplier=1.0, norm_eps=enc["rms_norm_eps"], rope_theta=enc["rope_theta"],
        cross_attn_encoder=True, cross_attn_decoder=True, cross_attn_k=top["cross_attn_k"],
        cross_attn_nheads=enc["num_attention_heads"],
        cross_attn_all_layers_encoder=bool(enc["cross_attn_all_layers"]),
        cross_attn_all_layers_decoder=bool(dec["cross_attn_all_layers"]),
        cross_attn_window_encoder=None, cross_attn_window_decoder=None, cross_attn_init_by_pooling=True,
        downsampling_by_pooling="max",
        encoder_hash_byte_group_size=tuple(int(s) for s in sizes),
        encoder_hash_byte_group_vocab=top["encoder_hash_byte_group_vocab"],
        encoder_hash_byte_group_nb_functions=top["encoder_hash_byte_group_nb_functions"],
        patcher=pcfg, entropy_model=ecfg,
    ).validate()


# ----------------------------------------------------------------------------------------------
# Keys and weights
# ----------------------------------------------------------------------------------------------


def official_to_hf_key(key: str, *, entropy: bool = False) -> str:
    """``local_decoder.layers.0.attention.wq.weight`` -> ``model.local_decoder.layers.0.self_attn.q_proj.weight``."""
    if not entropy and key == "local_decoder.output.weight":
        return _HF_DECODER_HEAD
    renamed = ".".join(OFFICIAL_TO_HF.get(part, part) for part in key.split("."))
    return (_PATCHER_PREFIX if entropy else "model.") + renamed


def hf_to_official_key(key: str) -> tuple[str, bool]:
    """Inverse of :func:`official_to_hf_key`: ``(official name, is_entropy_model)``."""
    if key == _HF_DECODER_HEAD:
        return "local_decoder.output.weight", False
    entropy = key.startswith(_PATCHER_PREFIX)
    if entropy:
        key = key[len(_PATCHER_PREFIX):]
    elif key.startswith("model."):
        key = key[len("model."):]
    else:
        raise ValueError(f"unexpected HF key {key!r} (expected model.* or lm_head.weight)")
    return ".".join(HF_TO_OFFICIAL.get(part, part) for part in key.split(".")), entropy


def split_hf_state_dict(sd: dict[str, np.ndarray], cfg: BLTConfig
                        ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """HF tensors -> (official BLT state dict, official entropy-model state dict)."""
    blt: dict[str, np.ndarray] = {}
    ent: dict[str, np.ndarray] = {}
    for key, value in sd.items():
        if key == HF_HASH_KEY:
            t, vh = cfg.n_hash_tables, cfg.encoder_hash_byte_group_vocab
            if value.ndim != 2 or value.shape[0] != t * vh:
                raise ValueError(f"{HF_HASH_KEY} has shape {tuple(value.shape)}, config expects "
                                 f"[{t} * {vh}, {cfg.dim_local_encoder}]")
            for i in range(t):
                blt[f"encoder_hash_tok_embedding.{i}.weight"] = value[i * vh:(i + 1) * vh]
            continue
        name, is_entropy = hf_to_official_key(key)
        (ent if is_entropy else blt)[name] = value
    return blt, ent


def hf_state_dict_to_bundle(sd: dict[str, np.ndarray], cfg: BLTConfig, dtype: Any = np.float32) -> dict:
    """HF tensors -> ``{"blt": params, "entropy": params}`` (entropy only if ``cfg.entropy_model``)."""
    blt_sd, ent_sd = split_hf_state_dict(sd, cfg)
    bundle = {"blt": tree_from_state_dict(blt_sd, blt_entries(cfg), "HF BLT", dtype)}
    if cfg.entropy_model is not None:
        bundle["entropy"] = tree_from_state_dict(ent_sd, entropy_entries(cfg.entropy_model), "HF patcher", dtype)
    elif ent_sd:
        raise ValueError(f"HF checkpoint has {len(ent_sd)} model.patcher.* tensors but its config does not "
                         f"patch with an entropy model")
    return bundle


def bundle_to_hf_state_dict(bundle: dict, cfg: BLTConfig, dtype: Optional[Any] = None) -> dict[str, np.ndarray]:
    """``{"blt", "entropy"}`` params -> HF tensors (inverse of :func:`hf_state_dict_to_bundle`)."""
    blt_sd = state_dict_from_tree(bundle["blt"], blt_entries(cfg), "BLT", dtype)
    t = cfg.n_hash_tables
    hashes = [blt_sd.pop(f"encoder_hash_tok_embedding.{i}.weight") for i in range(t)]
    out = {official_to_hf_key(k): v for k, v in blt_sd.items()}
    out[HF_HASH_KEY] = np.concatenate(hashes) if hashes else np.zeros((0, cfg.dim_local_encoder), np.float32)
    if cfg.entropy_model is not None:
        ent_sd = state_dict_from_tree(bundle["entropy"], entropy_entries(cfg.entropy_model), "entropy model", dtype)
        out.update({official_to_hf_key(k, entropy=True): v for k, v in ent_sd.items()})
    return out


def read_hf_dir(path: str | pathlib.Path, dtype: Any = np.float32) -> tuple[BLTConfig, dict]:
    """``(config, bundle)`` from a HF ``save_pretrained`` directory."""
    path = pathlib.Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"HF checkpoint {path}: missing config.json")
    cfg = config_from_hf(json.loads(config_file.read_text()))
    return cfg, hf_state_dict_to_bundle(load_safetensors_dir(path), cfg, dtype)


# ----------------------------------------------------------------------------------------------
# Patch-length convention
# ----------------------------------------------------------------------------------------------


def hf_patch_lengths(lengths_bp: np.ndarray, max_patch_length: Optional[int] = None) -> np.ndarray:
    """Official inference lengths -> exactly what the HF ``BltPatcher`` returns for the same entropies.

    ``lengths_bp``: official ``include_next_token=True`` lengths *before* any ``max_patch_length``
    split, trimmed (rows sum to N + 1, right-padded with 0, ``P`` = the largest patch count).  HF
    counts only the N real bytes:

    * rows with ``P`` patches: the last patch loses the virtual position (a 1-byte virtual patch
      becomes a trailing 0-length patch, as HF emits it);
    * shorter rows of a batch keep the official lengths (sum N + 1) and HF marks their last column
      with ``-1`` (an artefact of its batched start-id padding);
    * ``max_patch_length = m``: HF then splits every positive length into ``[m, ..., rest]``, drops
      0 / -1 entries and right-pads the rows with 0.

    :func:`official_from_hf_lengths` maps any of these back to lengths with the same patch ids under
    the official formula.
    """
    lengths = np.array(lengths_bp, dtype=np.int32, copy=True)
    if lengths.ndim != 2:
        raise ValueError(f"lengths must be [B, P], got {lengths.shape}")
    b, p = lengths.shape
    if p == 0:
        return lengths
    full = (lengths != 0).sum(axis=1) == p
    lengths[full, p - 1] -= 1
    lengths[~full, p - 1] = -1
    if max_patch_length is None:
        return lengths
    m = int(max_patch_length)
    rows = [[c for x in r if x > 0 for c in [m] * (int(x) // m) + ([int(x) % m] if x % m else [])]
            for r in lengths]
    width = max((len(r) for r in rows), default=0)
    out = np.zeros((b, width), np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def official_from_hf_lengths(hf_lengths_bp: np.ndarray) -> np.ndarray:
    """HF-convention lengths -> lengths that give the same model outputs under the official formula.

    The HF model derives patch ids from patch *starts* (``[0, cumsum[:-1]]``), the official code
    (and bltjax) from ``[0, cumsum]`` including the row total.  Both agree as soon as the total
    exceeds the last byte position; adding 1 to the last column achieves that for every HF output
    (rows summing to N, trailing 0-length patches, the ``-1`` end marker of batched rows, split rows)
    without moving any start.
    """
    lengths = np.array(hf_lengths_bp, dtype=np.int32, copy=True)
    if lengths.ndim != 2 or lengths.shape[1] == 0:
        raise ValueError(f"lengths must be [B, P] with P >= 1, got {lengths.shape}")
    lengths[:, -1] += 1
    return lengths


__all__ = ["OFFICIAL_TO_HF", "HF_TO_OFFICIAL", "HF_HASH_KEY", "config_from_hf", "official_to_hf_key",
           "hf_to_official_key", "split_hf_state_dict", "hf_state_dict_to_bundle", "bundle_to_hf_state_dict",
           "read_hf_dir", "hf_patch_lengths", "official_from_hf_lengths"]
