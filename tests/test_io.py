"""Checkpoint I/O: torch .pth reader, safetensors reader, params.json / HF config mapping, state dicts."""

from __future__ import annotations

import copy
import json
import os
import pickle
import struct
import zipfile

import jax
import ml_dtypes
import numpy as np
import pytest
from conftest import DATA

from bltjax.config import BLTConfig, TransformerConfig
from bltjax.io import hf as hf_io
from bltjax.io import release
from bltjax.io.safetensors_np import load_safetensors, load_safetensors_dir
from bltjax.io.torch_pth import load_torch_pth

TINY = DATA / "tiny-entropy"
HF_TINY = DATA / "hf-tiny"


def _json(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def params_json():
    return _json(TINY / "params.json")


@pytest.fixture(scope="module")
def entropy_json():
    return _json(TINY / "entropy_model" / "params.json")


@pytest.fixture(scope="module")
def blt_sd():
    return load_torch_pth(TINY / "consolidated.pth")


@pytest.fixture(scope="module")
def cfg(params_json):
    return release.config_from_params_json(params_json)


# ----------------------------------------------------------------------------------------------
# torch .pth reader
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sub", ["", "entropy_model"])
def test_pth_matches_npz_twin_bit_exactly(sub):
    sd = load_torch_pth(TINY / sub / "consolidated.pth")
    with np.load(TINY / sub / "consolidated.npz") as z:
        ref = dict(z)
    assert set(sd) == set(ref)
    for k, v in ref.items():
        assert sd[k].dtype == v.dtype and sd[k].shape == v.shape, k
        assert np.array_equal(sd[k].view(np.uint8), v.view(np.uint8)), k


def test_pth_dtypes_views_and_shared_storages():
    """torch.save output (torch 2.13) with many dtypes, strided views, offsets, shared storages."""
    sd = load_torch_pth(HF_TINY / "torch_dtypes.pth")  # {"model": {...}, "step": 7} -> the "model" dict
    with np.load(HF_TINY / "torch_dtypes.npz") as z:
        ref = dict(z)
    assert set(sd) == set(ref)
    for k, v in ref.items():
        got = sd[k]
        if k.startswith("bf16"):
            assert got.dtype == ml_dtypes.bfloat16
            got = got.view(np.uint16)
        assert got.dtype == v.dtype and got.shape == v.shape, k
        assert np.array_equal(got, v), k
        assert got.flags.c_contiguous
    assert sd["transposed"].shape == (5, 6) and sd["scalar"].shape == () and sd["empty"].shape == (0, 3)


def _bare_state_dict_pickle() -> bytes:
    """Protocol-2 opcodes of ``{"w": <2x2 float32 tensor on storage "0", offset 0, stride (2, 1)>}``,
    assembled by hand (what ``torch.save(state_dict)`` writes, without importing torch)."""
    def uni(s: str) -> bytes:
        return b"X" + struct.pack("<I", len(s)) + s.encode()
    return (b"\x80\x02}(" + uni("w") + b"ctorch._utils\n_rebuild_tensor_v2\n"
            + b"((" + uni("storage") + b"ctorch\nFloatStorage\n" + uni("0") + uni("cpu") + b"K\x04tQ"
            + b"K\x00K\x02K\x02\x86K\x02K\x01\x86\x89ccollections\nOrderedDict\n)RtRu.")


def test_pth_bare_state_dict(tmp_path):
    path = tmp_path / "bare.pth"
    w = np.arange(4, dtype=np.float32) + 0.5
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", _bare_state_dict_pickle())
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/data/0", w.tobytes())
    sd = load_torch_pth(path)
    assert list(sd) == ["w"] and np.array_equal(sd["w"], w.reshape(2, 2))
    with zipfile.ZipFile(path, "w") as z:  # storage too small for the tensor
        z.writestr("archive/data.pkl", _bare_state_dict_pickle())
        z.writestr("archive/data/0", w[:2].tobytes())
    with pytest.raises(ValueError, match="bytes, expected"):
        load_torch_pth(path)


def test_pth_top_level_without_model_key_must_be_flat():
    with pytest.raises(ValueError, match="not a flat state dict"):
        load_torch_pth(HF_TINY / "torch_dtypes.pth", key=None)


def _zip_with_pickle(path, payload: bytes):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pth"
    _zip_with_pickle(bad, pickle.dumps({"model": {"w": _Evil(marker)}}, protocol=2))
    with pytest.raises(ValueError, match=r"evil\.pth: refusing to unpickle (posix|nt|os)\.system"):
        load_torch_pth(bad)
    assert not marker.exists()
    # builtins are not allowed either (eval / getattr gadgets)
    _zip_with_pickle(bad, pickle.dumps({"model": {"w": eval}}, protocol=2))
    with pytest.raises(ValueError, match=r"refusing to unpickle (__builtin__|builtins)\.eval"):
        load_torch_pth(bad)
    # a persistent id that is not a torch storage reference
    payload = b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01X\x03\x00\x00\x00abcq\x02Q\x85q\x03s."
    _zip_with_pickle(bad, payload)
    with pytest.raises(ValueError, match="refusing to unpickle persistent id"):
        load_torch_pth(bad)


def test_non_zip_and_missing_files(tmp_path):
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.rest")
    with pytest.raises(ValueError, match="legacy"):
        load_torch_pth(legacy)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="non-zip"):
        load_torch_pth(junk)
    with pytest.raises(FileNotFoundError):
        load_torch_pth(tmp_path / "absent.pth")
    empty_zip = tmp_path / "empty.pth"
    with zipfile.ZipFile(empty_zip, "w") as z:
        z.writestr("x.txt", "hi")
    with pytest.raises(ValueError, match="data.pkl"):
        load_torch_pth(empty_zip)


# ----------------------------------------------------------------------------------------------
# safetensors reader
# ----------------------------------------------------------------------------------------------


def test_safetensors_reader_matches_package_and_reads_bf16(tmp_path):
    import safetensors.numpy as stn

    ours = load_safetensors(HF_TINY / "model.safetensors")
    ref = stn.load_file(HF_TINY / "model.safetensors")
    assert set(ours) == set(ref)
    assert all(ours[k].dtype == ref[k].dtype and np.array_equal(ours[k], ref[k]) for k in ref)
    # bf16 (unsupported by safetensors.numpy): hand-written file
    x = np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16)
    header = json.dumps({"x": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]},
                         "__metadata__": {"format": "pt"}}).encode()
    f = tmp_path / "a.safetensors"
    f.write_bytes(struct.pack("<Q", len(header)) + header + x.tobytes())
    got = load_safetensors_dir(tmp_path)["x"]
    assert got.dtype == ml_dtypes.bfloat16 and np.array_equal(got, x)
    with pytest.raises(FileNotFoundError):
        load_safetensors_dir(tmp_path / "nothing")


# ----------------------------------------------------------------------------------------------
# params.json -> config
# ----------------------------------------------------------------------------------------------


def test_params_json_mapping_of_fixture(cfg):
    assert isinstance(cfg, BLTConfig) and cfg.entropy_model is None
    expect = dict(
        n_layers_local_encoder=1, n_layers_global=2, n_layers_local_decoder=2, dim_local_encoder=64,
        dim_global=128, dim_local_decoder=64, n_heads_local_encoder=4, n_heads_global=4,
        n_heads_local_decoder=4, n_kv_heads=None, n_kv_heads_global=None, cross_attn_k=2, cross_attn_nheads=4,
        cross_attn_all_layers_encoder=False, cross_attn_all_layers_decoder=True, cross_attn_init_by_pooling=True,
        downsampling_by_pooling="max", cross_attn_window_encoder=None, cross_attn_window_decoder=None,
        encoder_hash_byte_group_size=(3, 4, 5, 6, 7, 8), encoder_hash_byte_group_vocab=257,
        encoder_hash_byte_group_nb_functions=1, local_attention_window_len=16, local_doc_mask=True,
        global_attn="block_causal", rope_theta=500000.0, norm_eps=1e-5, multiple_of=128, ffn_dim_multiplier=1.0,
        max_seqlen=128, max_encoder_seq_length=256, vocab_size=260, eos_id=2)
    for k, v in expect.items():
        assert getattr(cfg, k) == v, k
    p = cfg.patcher
    assert (p.mode, p.threshold, p.threshold_add, p.monotonicity, p.patch_size, p.max_patch_length) == (
        "entropy", 1.5113499164581299, None, False, 4.5, None)
    assert (p.entropy_chunk_len, p.entropy_flatten_rows, p.entropy_dtype, p.patches_sum_to_n) == (
        None, False, "float32", False)


def test_entropy_params_json_mapping(entropy_json):
    e = release.config_from_params_json(entropy_json)
    assert isinstance(e, TransformerConfig)
    assert (e.dim, e.n_layers, e.n_heads, e.kv_heads, e.ffn_dim, e.rope_theta, e.max_seqlen, e.sliding_window,
            e.doc_mask, e.norm_eps) == (64, 2, 4, 4, 256, 10000.0, 8192, 512, True, 1e-5)
    with pytest.raises(ValueError, match="entropy model"):
        release.entropy_config_from_params_json(_json(TINY / "params.json"))


def test_entropy_params_json_realtime_quirks(entropy_json):
    d = copy.deepcopy(entropy_json)
    d["entropy_model"]["sliding_window"] = 256
    d["entropy_model"]["rope_theta"] = 50000.0
    with pytest.warns(UserWarning, match="official realtime loader"):
        e = release.config_from_params_json(d)
    assert (e.sliding_window, e.rope_theta) == (256, 50000.0)
    official = release.config_from_params_json(d, official_realtime=True)
    assert (official.sliding_window, official.rope_theta, official.doc_mask) == (512, 10000.0, True)


def test_official_realtime_patcher(params_json):
    cfg = release.config_from_params_json(params_json, official_realtime=True)
    assert (cfg.patcher.entropy_chunk_len, cfg.patcher.entropy_flatten_rows, cfg.patcher.entropy_dtype) == (
        8192, True, "bfloat16")


def _mutated(d, path, value):
    d = copy.deepcopy(d)
    node = d
    *parents, last = path.split(".")
    for p in parents:
        node = node[p]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return d


@pytest.mark.parametrize("path,value,match", [
    ("model.encoder_enable_byte_ngrams", True, "model.encoder_enable_byte_ngrams"),
    ("model.use_rope", False, "model.use_rope"),
    ("model.non_linearity", "gelu", "model.non_linearity"),
    ("model.weight_tying", True, "model.weight_tying"),
    ("model.norm_type", "layernorm", "model.norm_type"),
    ("model.pre_norm", False, "model.pre_norm"),
    ("model.dim_token", 32, "model.dim_token"),
    ("model.use_local_encoder_transformer", False, "model.use_local_encoder_transformer"),
    ("model.pm_size", 4, "model.pm_size"),
    ("model.cross_attn_init_by_pooling", False, "model.cross_attn_init_by_pooling"),
    ("model.brand_new_field", 1, "unknown field.*model.brand_new_field"),
    ("brand_new_section", {}, "unknown top-level"),
    ("data.patcher_args.brand_new", 1, "patcher_args.brand_new"),
    ("data.tokenizer_args.name", "tiktoken", "tokenizer_args.name"),
    ("model.dim_local_decoder", 32, "contradictory.*dim_local_decoder"),
    ("model.patching_mode", "space", "contradictory.*patching_mode"),
    ("model.patching_mode", "", "legacy"),
    ("model.attn_bias_type", "local_block_causal", "attn_bias_type"),
    ("model.attn_impl", "fmha", "attn_impl"),
    ("model.head_dim", 32, "head_dim"),
    ("model.downsampling_by_pooling", "avg,max", "downsampling_by_pooling"),
    ("model.vocab_size", 300, "vocab_size"),
    ("model", None, "model is null"),
    ("entropy_model", None, None),  # ignored for a BLT checkpoint: loads fine
])
def test_params_json_errors(params_json, path, value, match):
    d = _mutated(params_json, path, value)
    if match is None:
        release.config_from_params_json(d)
        return
    with pytest.raises(ValueError, match=match):
        release.config_from_params_json(d)


def test_params_json_sdpa_means_plain_causal(params_json):
    d = _mutated(params_json, "model.attn_impl", "sdpa")
    d = _mutated(d, "model.attn_bias_type", "causal")
    with pytest.warns(UserWarning, match="plain causal"):
        cfg = release.config_from_params_json(d)
    assert (cfg.local_attention_window_len, cfg.local_doc_mask, cfg.global_attn) == (None, False, "causal")


def test_params_json_field_tables_cover_fixture(params_json, entropy_json):
    """Every field of the fixture is mapped, required or ignored-with-reason; reasons are non-empty."""
    assert all(isinstance(r, str) and r for r in release.IGNORED_FIELDS.values())
    for key in params_json["model"]:
        assert key in release._MODEL_MAPPED or f"model.{key}" in release.IGNORED_FIELDS or \
            f"model.{key}" in release.REQUIRED_VALUES, key
    for key in entropy_json["entropy_model"]:
        assert key in release._ENTROPY_MAPPED or f"entropy_model.{key}" in release.IGNORED_FIELDS or \
            f"entropy_model.{key}" in release.REQUIRED_VALUES, key


# ----------------------------------------------------------------------------------------------
# state dict <-> params
# ----------------------------------------------------------------------------------------------


def test_state_dict_round_trip_and_layout(blt_sd, cfg):
    from bltjax.model import blt

    params = release.state_dict_to_params(blt_sd, cfg)
    ref = jax.eval_shape(lambda: blt.init_params(cfg, jax.random.key(0)))
    assert jax.tree.structure(params) == jax.tree.structure(ref)
    assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref)))
    # layout spot checks (params_layout.md): [in, out] weights, stacked layers, table order
    assert np.array_equal(params["encoder"]["layers"]["wq"][0], blt_sd["local_encoder.layers.0.attention.wq.weight"].T)
    assert np.array_equal(params["decoder"]["cross"]["norm_kv"][1],
                          blt_sd["local_decoder.cross_attn_layers.1.cross_attn_norm_kv.weight"])
    assert np.array_equal(params["hash_embeddings"][5], blt_sd["encoder_hash_tok_embedding.5.weight"])
    assert np.array_equal(params["decoder"]["output"], blt_sd["local_decoder.output.weight"].T)
    back = release.params_to_state_dict(params, cfg)
    assert set(back) == set(blt_sd)
    assert all(np.array_equal(back[k], blt_sd[k]) for k in blt_sd)


def test_entropy_state_dict_round_trip(entropy_json):
    ecfg = release.config_from_params_json(entropy_json)
    sd = load_torch_pth(TINY / "entropy_model" / "consolidated.pth")
    params = release.entropy_state_dict_to_params(sd, ecfg)
    assert params["layers"]["w1"].shape == (2, 64, 256) and params["output"].shape == (64, 260)
    back = release.entropy_params_to_state_dict(params, ecfg)
    assert set(back) == set(sd) and all(np.array_equal(back[k], sd[k]) for k in sd)


def test_state_dict_errors_list_every_problem(blt_sd, cfg):
    sd = dict(blt_sd)
    del sd["local_decoder.norm.weight"]
    sd["local_encoder.extra.weight"] = np.zeros(3, np.float32)
    sd["global_transformer.layers.1.ffn_norm.weight"] = np.zeros(7, np.float32)
    with pytest.raises(ValueError) as err:
        release.state_dict_to_params(sd, cfg)
    msg = str(err.value)
    assert "missing keys (1): local_decoder.norm.weight" in msg
    assert "unexpected keys (1): local_encoder.extra.weight" in msg
    assert "global_transformer.layers.1.ffn_norm.weight: checkpoint (7,) vs config (128,)" in msg
    # non-persistent RoPE tables some checkpoints carry are dropped silently
    sd = dict(blt_sd, **{"local_encoder.rope.freqs_cis": np.zeros((4, 2, 2, 2), np.float32)})
    release.state_dict_to_params(sd, cfg)
    # wrong params shape on the way back
    params = release.state_dict_to_params(blt_sd, cfg)
    params["decoder"]["norm"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="decoder/norm"):
        release.params_to_state_dict(params, cfg)


def test_bf16_weights_and_param_dtype(blt_sd, cfg):
    sd16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in blt_sd.items()}
    p32 = release.state_dict_to_params(sd16, cfg)
    p16 = release.state_dict_to_params(sd16, cfg, dtype="bfloat16")
    assert p32["tok_embeddings"].dtype == np.float32 and p16["tok_embeddings"].dtype == ml_dtypes.bfloat16
    assert np.array_equal(p32["tok_embeddings"], p16["tok_embeddings"].astype(np.float32))


# ----------------------------------------------------------------------------------------------
# Hugging Face layout
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_json():
    return _json(HF_TINY / "config.json")


def test_hf_config_mapping(hf_json):
    cfg = hf_io.config_from_hf(hf_json)
    expect = dict(dim_local_encoder=32, dim_local_decoder=32, dim_global=48, n_layers_local_encoder=1,
                  n_layers_local_decoder=2, n_layers_global=2, n_heads_local_encoder=2, n_heads_global=4,
                  n_kv_heads=None, n_kv_heads_global=2, cross_attn_k=2, cross_attn_nheads=2,
                  cross_attn_all_layers_encoder=False, cross_attn_all_layers_decoder=True,
                  local_attention_window_len=16, local_doc_mask=False, global_attn="causal", multiple_of=32,
                  max_seqlen=64, max_encoder_seq_length=256, encoder_hash_byte_group_size=(3, 4, 5),
                  encoder_hash_byte_group_vocab=61, encoder_hash_byte_group_nb_functions=2,
                  downsampling_by_pooling="max", rope_theta=500000.0)
    for k, v in expect.items():
        assert getattr(cfg, k) == v, k
    assert cfg.global_input_projection and cfg.local_ffn_dim(32) == 96 and cfg.local_ffn_dim(48) == 128
    p, e = cfg.patcher, cfg.entropy_model
    assert (p.mode, p.patch_size, p.max_patch_length, p.entropy_chunk_len, p.entropy_flatten_rows,
            p.patches_sum_to_n) == ("entropy", 4.0, None, None, False, True)
    assert p.threshold == pytest.approx(hf_json["patching_threshold"])
    assert (e.dim, e.n_layers, e.n_heads, e.kv_heads, e.ffn_dim, e.sliding_window, e.doc_mask, e.rope_theta,
            e.max_seqlen) == (32, 2, 4, 2, 96, 32, False, 10000.0, 256)


def test_hf_keys_round_trip_bit_exactly(hf_json):
    cfg, bundle = hf_io.read_hf_dir(HF_TINY)
    sd = load_safetensors(HF_TINY / "model.safetensors")
    back = hf_io.bundle_to_hf_state_dict(bundle, cfg)
    assert set(back) == set(sd)
    assert all(np.array_equal(back[k], sd[k]) for k in sd)
    for key in sd:
        if key != hf_io.HF_HASH_KEY:
            name, entropy = hf_io.hf_to_official_key(key)
            assert hf_io.official_to_hf_key(name, entropy=entropy) == key
    # fused hash table: table t = rows t*Vh .. (t+1)*Vh-1, function-major
    vh = cfg.encoder_hash_byte_group_vocab
    assert np.array_equal(bundle["blt"]["hash_embeddings"][4], sd[hf_io.HF_HASH_KEY][4 * vh:5 * vh])
    assert np.array_equal(bundle["entropy"]["layers"]["wk"][1], sd["model.patcher.layers.1.self_attn.k_proj.weight"].T)


@pytest.mark.parametrize("path,value,match", [
    ("encoder_config.num_key_value_heads", 1, "cross-attention"),
    ("tie_word_embeddings", True, "tie_word_embeddings"),
    ("decoder_config.rms_norm_eps", 1e-6, "rms_norm_eps"),
    ("global_config.intermediate_size", 100, "intermediate sizes"),
    ("global_config.rope_parameters", {"rope_type": "linear", "rope_theta": 1.0, "factor": 2.0}, "rope_type"),
    ("decoder_config.num_attention_heads", 4, "num_attention_heads"),
    ("encoder_config.cross_attn_k", 3, "cross_attn_k"),
    ("model_type", "llama", "model_type"),
    ("patching_threshold", None, "patching_threshold"),
])
def test_hf_config_errors(hf_json, path, value, match):
    with pytest.raises(ValueError, match=match):
        hf_io.config_from_hf(_mutated(hf_json, path, value))


def test_hf_config_unknown_fields_warn_and_byte_fallback(hf_json):
    with pytest.warns(UserWarning, match="brand_new"):
        hf_io.config_from_hf(_mutated(hf_json, "brand_new", 1))
    cfg = hf_io.config_from_hf(_mutated(hf_json, "patch_in_forward", False))
    assert cfg.patcher.mode == "byte" and cfg.entropy_model is None and not cfg.patcher.patches_sum_to_n
    with pytest.raises(ValueError, match="patcher"):  # weights present but unused -> refuse
        hf_io.hf_state_dict_to_bundle(load_safetensors(HF_TINY / "model.safetensors"), cfg)


def test_hf_patch_length_convention():
    official = np.array([[1, 3, 2, 1], [1, 4, 2, 0]])  # rows sum to N+1 = 7; row 0 ends in a virtual patch
    hf = hf_io.hf_patch_lengths(official)
    assert hf.tolist() == [[1, 3, 2, 0], [1, 4, 2, -1]]
    assert hf_io.official_from_hf_lengths(hf).tolist() == [[1, 3, 2, 1], [1, 4, 2, 0]]
    assert hf_io.hf_patch_lengths(official, max_patch_length=2).tolist() == [[1, 2, 1, 2], [1, 2, 2, 2]]
    with pytest.raises(ValueError):
        hf_io.hf_patch_lengths(np.ones(3))
