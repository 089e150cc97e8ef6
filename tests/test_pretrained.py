"""Acceptance: load released-format / HF checkpoints and reproduce the reference implementations.

* ``tiny-entropy``: official code (release layout) -> patch lengths exact, entropies / logits 1e-5;
* ``hf-tiny``: Hugging Face ``BltForCausalLM`` (transformers 5.24) -> HF patch lengths exact
  (single rows, the batched ``-1`` format, ``max_patch_length``), logits 1e-4;
* ``python -m bltjax.convert`` round trip, and clear errors for bad checkpoints / inputs.

Single sequences are run as one right-padded ragged batch (``lengths=``), which shares one compiled
program; each row is computed on its own, so this is the single-row computation.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from conftest import DATA

import bltjax
from bltjax.convert import convert
from bltjax.convert import main as convert_main
from bltjax.pretrained import Pretrained, detect_layout

TINY = DATA / "tiny-entropy"
HF_TINY = DATA / "hf-tiny"
N_SEQS = 4


def _ragged(expected: dict) -> tuple[np.ndarray, np.ndarray]:
    seqs = [expected[f"s{i}_tokens"] for i in range(N_SEQS)]
    lengths = np.array([len(s) for s in seqs], np.int32)
    toks = np.zeros((N_SEQS, lengths.max()), np.int32)
    for i, s in enumerate(seqs):
        toks[i, :len(s)] = s
    return toks, lengths


@pytest.fixture(scope="module")
def official():
    return bltjax.load_pretrained(TINY)


@pytest.fixture(scope="module")
def hf_model():
    return bltjax.load_pretrained(HF_TINY)


@pytest.fixture(scope="module")
def hf_expected():
    with np.load(HF_TINY / "expected.npz") as z:
        return dict(z)


# ----------------------------------------------------------------------------------------------
# Official release layout: the acceptance parity test
# ----------------------------------------------------------------------------------------------


def test_release_loads(official):
    assert isinstance(official, Pretrained) and official.source == "release"
    assert official.config.patcher.mode == "entropy" and official.config.entropy_model is not None
    assert official.num_params() == {"blt": 829632, "entropy_model": 164672}


@pytest.mark.parametrize("i", range(N_SEQS))
def test_release_patch_and_entropies_per_sequence(official, expected, i):
    toks = expected[f"s{i}_tokens"][None]
    lengths = official.patch(toks)
    assert lengths.dtype == np.int32
    np.testing.assert_array_equal(lengths[0], expected[f"s{i}_patch_lengths"])
    np.testing.assert_allclose(official.entropies(toks)[0], expected[f"s{i}_entropies"], atol=1e-5, rtol=0)


def test_release_logits_parity(official, expected):
    toks, lengths = _ragged(expected)
    patches = official.patch(toks, lengths)
    logits = official.logits(toks, lengths=lengths)
    assert logits.dtype == np.float32 and logits.shape == (*toks.shape, 260)
    for i in range(N_SEQS):
        ref = expected[f"s{i}_patch_lengths"]
        np.testing.assert_array_equal(patches[i, :len(ref)], ref)
        assert (patches[i, len(ref):] == 0).all()
        np.testing.assert_allclose(logits[i, :lengths[i]], expected[f"s{i}_logits"], atol=1e-5, rtol=1e-5)
        assert (logits[i, lengths[i]:] == 0).all()
    # the official patch lengths given explicitly (padded per row) give the same logits
    given = np.zeros((N_SEQS, max(len(expected[f"s{i}_patch_lengths"]) for i in range(N_SEQS))), np.int32)
    for i in range(N_SEQS):
        ref = expected[f"s{i}_patch_lengths"]
        given[i, :len(ref)] = ref
    np.testing.assert_allclose(official.logits(toks, given, lengths=lengths), logits, atol=1e-6, rtol=0)


def test_release_padded_batch_parity(official, expected):
    toks = expected["batch_tokens"]
    patches = official.patch(toks)
    np.testing.assert_array_equal(patches, expected["batch_patch_lengths"])
    np.testing.assert_allclose(official.logits(toks), expected["batch_logits"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(official.logits(toks, expected["batch_patch_lengths"]), expected["batch_logits"],
                               atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Hugging Face layout
# ----------------------------------------------------------------------------------------------


def test_hf_parity(hf_model, hf_expected):
    E = hf_expected
    assert hf_model.source == "hf" and hf_model.hf_convention
    for i in range(N_SEQS):  # single rows: the HF patcher's own lengths (sum N, trailing 0 patches)
        toks = E[f"s{i}_tokens"][None]
        np.testing.assert_array_equal(hf_model.patch(toks)[0], E[f"s{i}_patch_lengths"])
        np.testing.assert_allclose(hf_model.entropies(toks)[0], E[f"s{i}_entropies"], atol=1e-5, rtol=0)
    toks, lengths = _ragged(E)
    logits = hf_model.logits(toks, lengths=lengths)
    for i in range(N_SEQS):
        np.testing.assert_allclose(logits[i, :lengths[i]], E[f"s{i}_logits"], atol=1e-4, rtol=1e-4)
    # batched: HF's raw batched patch lengths (-1 end marker) and logits
    np.testing.assert_array_equal(hf_model.patch(E["batch_tokens"]), E["batch_patch_lengths_hf_raw"])
    np.testing.assert_allclose(hf_model.logits(E["batch_tokens"]), E["batch_logits"], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(hf_model.logits(E["batch_tokens"], E["batch_patch_lengths_hf_raw"]),
                               E["batch_logits"], atol=1e-4, rtol=1e-4)


def test_hf_max_patch_length_parity(hf_model, hf_expected):
    """HF splits only the N real bytes and drops empty patches (design §16.3, 1)."""
    E = hf_expected
    cfg = hf_model.config
    cfg = dataclasses.replace(cfg, patcher=dataclasses.replace(cfg.patcher, max_patch_length=4))
    model = Pretrained(config=cfg, params=hf_model.params, entropy_params=hf_model.entropy_params, source="hf")
    for i in range(N_SEQS):
        np.testing.assert_array_equal(model.patch(E[f"s{i}_tokens"][None])[0], E[f"s{i}_patch_lengths_mpl4"])
    # Single-row semantics inside one batch: HF's batched encoding (shorter rows keep the virtual
    # position and end with -1) of each row's own lengths.
    toks, lengths = _ragged(E)
    rows = [E[f"s{i}_patch_lengths_mpl4"] for i in range(N_SEQS)]
    given = np.zeros((N_SEQS, max(len(r) for r in rows)), np.int32)
    for i, r in enumerate(rows):
        given[i, :len(r)] = r
        if len(r) < given.shape[1]:
            given[i, len(r) - 1] += 1
            given[i, -1] = -1
    logits = model.logits(toks, given, lengths=lengths)
    for i in range(N_SEQS):
        np.testing.assert_allclose(logits[i, :lengths[i]], E[f"s{i}_logits_mpl4"], atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(model.patch(E["batch_tokens"]), E["batch_patch_lengths_mpl4"])
    np.testing.assert_allclose(model.logits(E["batch_tokens"]), E["batch_logits_mpl4"], atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------


def test_convert_round_trip(official, expected, tmp_path, capsys):
    out = tmp_path / "converted"
    assert convert_main([str(TINY), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "patching_mode" in printed and "entropy" in printed and "829,632" in printed
    assert detect_layout(out) == "bltjax"
    loaded = bltjax.load_pretrained(out)
    assert loaded.source == "bltjax" and loaded.config == official.config
    toks = expected["batch_tokens"]
    np.testing.assert_array_equal(loaded.patch(toks), expected["batch_patch_lengths"])
    np.testing.assert_array_equal(loaded.logits(toks), official.logits(toks))
    # refuses to overwrite a non-empty directory unless --force
    assert convert_main([str(TINY), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    with pytest.raises(FileExistsError):
        convert(TINY, out)


def test_convert_hf_keeps_conventions(hf_model, hf_expected, tmp_path):
    out = tmp_path / "hf-converted"
    summary = convert(HF_TINY, out)
    assert summary["source_layout"] == "hf" and summary["patch_convention"].startswith("hf")
    loaded = bltjax.load_pretrained(out)
    assert loaded.config == hf_model.config and loaded.hf_convention
    toks = hf_expected["batch_tokens"]
    np.testing.assert_array_equal(loaded.patch(toks), hf_expected["batch_patch_lengths_hf_raw"])
    np.testing.assert_array_equal(loaded.logits(toks), hf_model.logits(toks))


# ----------------------------------------------------------------------------------------------
# Bad checkpoints and inputs
# ----------------------------------------------------------------------------------------------


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        bltjax.load_pretrained(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="params.json.*config.json"):
        bltjax.load_pretrained(empty)
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(TINY / "params.json", no_weights)
    with pytest.raises(FileNotFoundError, match="consolidated.pth"):
        bltjax.load_pretrained(no_weights)
    no_entropy = tmp_path / "no-entropy" / "blt"
    no_entropy.mkdir(parents=True)
    for f in ("params.json", "consolidated.pth"):
        shutil.copy(TINY / f, no_entropy)
    with pytest.raises(FileNotFoundError, match="entropy_model"):
        bltjax.load_pretrained(no_entropy)
    # ... found next to the checkpoint (official hf-weights/{blt_1b, entropy_model} layout) ...
    shutil.copytree(TINY / "entropy_model", no_entropy.parent / "entropy_model")
    assert bltjax.load_pretrained(no_entropy).entropy_params is not None
    # ... and with weights in consolidated/consolidated.pth
    (no_entropy / "consolidated").mkdir()
    shutil.move(no_entropy / "consolidated.pth", no_entropy / "consolidated" / "consolidated.pth")
    assert bltjax.load_pretrained(no_entropy).source == "release"
    with pytest.raises(ValueError, match="entropy-model checkpoint"):
        bltjax.load_pretrained(TINY / "entropy_model")
    hf_broken = tmp_path / "hf"
    hf_broken.mkdir()
    shutil.copy(HF_TINY / "config.json", hf_broken)
    with pytest.raises(FileNotFoundError, match="safetensors"):
        bltjax.load_pretrained(hf_broken)
    (hf_broken / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type"):
        bltjax.load_pretrained(hf_broken)


def test_hub_mixin_layout(official, tmp_path):
    """facebook/blt-1b style: config.json {"args": ...}, train_args.json, model.safetensors (official keys)."""
    import jax
    import safetensors.numpy as stn

    from bltjax.io.torch_pth import load_torch_pth

    hub = tmp_path / "blt-hub"
    hub.mkdir()
    params_json = json.loads((TINY / "params.json").read_text())
    (hub / "config.json").write_text(json.dumps({"args": params_json["model"]}))
    (hub / "train_args.json").write_text(json.dumps(params_json))
    stn.save_file(load_torch_pth(TINY / "consolidated.pth"), hub / "model.safetensors")
    shutil.copytree(TINY / "entropy_model", hub / "entropy_model")
    assert detect_layout(hub) == "hub-mixin"
    loaded = bltjax.load_pretrained(hub)
    assert loaded.config == official.config
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), loaded.params, official.params)
    assert all(jax.tree.leaves(same))


def test_bad_inputs(official, expected):
    good = expected["s0_tokens"][None]
    with pytest.raises(ValueError, match="0..259"):
        official.logits(np.array([[1, 260, 5]]))
    with pytest.raises(ValueError, match="0..259"):
        official.patch(np.array([[1, -1, 5]]))
    with pytest.raises(ValueError, match="max_encoder_seq_length=256"):
        official.entropies(np.full((1, 257), 70))
    with pytest.raises(ValueError, match="2-D"):
        official.patch(expected["s0_tokens"])
    with pytest.raises(ValueError, match="integers"):
        official.logits(good.astype(np.float32))
    with pytest.raises(ValueError, match="sum to its length"):
        official.logits(good, np.array([[1, 2, 3]]))
    with pytest.raises(ValueError, match="first patch"):
        lengths = expected["s0_patch_lengths"].copy()
        lengths[0], lengths[1] = 2, lengths[1] - 1
        official.logits(good, lengths[None])
    with pytest.raises(ValueError, match="lengths must be in"):
        official.patch(good, lengths=np.array([0]))


def test_no_entropy_model_errors(hf_model, expected):
    cfg = dataclasses.replace(hf_model.config, entropy_model=None,
                              patcher=dataclasses.replace(hf_model.config.patcher, mode="byte",
                                                          patches_sum_to_n=False, threshold=None))
    byte_model = Pretrained(config=cfg, params=hf_model.params, source="hf")
    toks = expected["s2_tokens"][None]
    with pytest.raises(ValueError, match="no entropy model"):
        byte_model.entropies(toks)
    assert (byte_model.patch(toks) == 1).all() and byte_model.patch(toks).shape == (1, toks.shape[1] + 1)
