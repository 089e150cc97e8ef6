"""bltjax.eval: bits per byte against manual computations, patch statistics, FLOPs, the --report output."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bltjax import eval as ev
from bltjax import patcher, pretrained, viz
from bltjax.config import PatcherConfig, tiny_blt_config
from bltjax.data import documents
from bltjax.model import blt
from bltjax.model import entropy_model as entropy_lm
from bltjax.patcher import patch_lengths


def _exact(text: str, n: int) -> bytes:
    """UTF-8 of ``text`` cut at a character boundary and padded with '.' to exactly ``n`` bytes."""
    out = b""
    for ch in text:
        if len(out) + len(ch.encode()) > n:
            break
        out += ch.encode()
    return out + b"." * (n - len(out))


# Stream lengths 83, 83, 51 tokens: windows of 32 targets plus a short one of 18 (few jit shapes).
FILES = [
    ("latin.txt", [_exact("The quick brown fox jumps over the lazy dog. " * 2, 81)]),
    ("cyrillic.txt", [_exact("Все люди рождаются свободными и равными в своем достоинстве", 81)]),
    ("invalid.bin", [b"\xff\xfe\x00 not utf-8 \xc3(", _exact("second document, plain ascii", 47 - 16)]),
]
_blt_forward = jax.jit(blt.forward, static_argnums=1)
_lm_forward = jax.jit(entropy_lm.forward, static_argnums=1)
_static_lengths = jax.jit(lambda pcfg, t, e, mp: patcher.model_patch_lengths(pcfg, t, e, max_patches=mp),
                          static_argnums=(0, 3))


THETA = 1.5113499164581299  # the fixture's threshold


@jax.jit
def _lm_entropy_lengths(logits, x):
    ent = entropy_lm.entropies_from_logits(logits)
    return patch_lengths(PatcherConfig(mode="entropy", threshold=THETA), x, ent, include_next_token=False)[0]


def _windows_manual(docs, seq_len):
    """Independent windowing: the file's stream cut every seq_len tokens, unpadded."""
    stream = np.concatenate([documents.encode_document(d) for d in docs])
    for lo in range(0, len(stream) - 1, seq_len):
        w = stream[lo:lo + seq_len + 1]
        yield w[:-1], w[1:]


def _ce_sum(logits_nv, y_n):
    logp = jax.nn.log_softmax(jnp.asarray(logits_nv, jnp.float32), axis=-1)
    return -float(jnp.sum(logp[jnp.arange(len(y_n)), jnp.asarray(y_n)]))


def test_file_windows_cover_every_target_once():
    docs = [b"abc", b"", b"hello world"]
    x, y, n_x = ev.file_windows(docs, 4)
    stream = np.concatenate([documents.encode_document(d) for d in docs])
    assert y[y != 0].tolist() == stream[1:].tolist()
    assert n_x.sum() == len(stream) - 1
    assert (x[:, 1:] == y[:, :-1]).all()


def _random_params(cfg, seed=0):
    """Parameters with ``blt.init_params``' tree and shapes (numpy draws: no init compile, fast)."""
    shapes = jax.eval_shape(lambda: blt.init_params(cfg, jax.random.PRNGKey(seed)))
    rng = np.random.default_rng(seed)

    def draw(path, s):
        if "norm" in jax.tree_util.keystr(path):
            return jnp.ones(s.shape, s.dtype)
        return jnp.asarray(rng.normal(0.0, s.shape[-2] ** -0.5 if len(s.shape) > 1 else 1.0, s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def test_blt_bits_per_byte_matches_manual():
    cfg = tiny_blt_config()  # static patching, patch size 4
    params = _random_params(cfg)
    ck = pretrained.LoadedCheckpoint(path="memory", config=cfg, params=params, entropy_config=None,
                                   entropy_params=None, patcher=cfg.patcher)
    seq_len = 32
    rep = ev.evaluate(ck, FILES, seq_len=seq_len, batch=3)
    assert rep.kind == "blt" and [f.name for f in rep.files] == [n for n, _ in FILES]
    for (_name, docs), res in zip(FILES, rep.files):
        ce, n, patches = 0.0, 0, 0
        for x, y in _windows_manual(docs, seq_len):  # unpadded windows, one at a time
            lengths, _ = _static_lengths(cfg.patcher, jnp.asarray(x)[None], None, 1 + -(-len(x) // 4))
            logits = _blt_forward(params, cfg, jnp.asarray(x)[None], lengths)[0]
            ce += _ce_sum(logits, y)
            n += len(y)
            patches += 1 + -(-(len(x) - 1) // 4)  # [1, 4, 4, ..] starting inside x
        assert res.n_targets == n == sum(len(d) + 2 for d in docs) - 1
        np.testing.assert_allclose(res.ce_nats, ce, rtol=2e-5)
        np.testing.assert_allclose(res.bits_per_byte, ce / math.log(2) / n, rtol=2e-5)
        assert res.n_patches == patches and res.n_tokens == n
        assert res.flops_per_byte == pytest.approx(cfg.flops_per_byte(res.avg_patch_size, seq_len, training=False))
    tot = rep.total
    assert tot.n_targets == sum(f.n_targets for f in rep.files)
    assert tot.bits_per_byte == pytest.approx(sum(f.ce_nats for f in rep.files) / math.log(2) / tot.n_targets)
    assert rep.files[1].n_chars == len(FILES[1][1][0].decode())
    assert rep.files[2].n_chars == len(viz.split_utf8(FILES[2][1][0])) + len(FILES[2][1][1])


def test_entropy_model_bits_per_byte_and_patches(fixture_dir):
    ck = pretrained.open_checkpoint(fixture_dir / "entropy_model")
    assert not ck.is_blt and ck.entropy_params is not None
    seq_len, theta = 48, THETA
    rep = ev.evaluate(ck, FILES, seq_len=seq_len, batch=4, threshold=theta)
    assert rep.kind == "entropy" and rep.patcher["threshold"] == theta
    for (_name, docs), res in zip(FILES, rep.files):
        ce, n, patches = 0.0, 0, 0
        for x, y in _windows_manual(docs, seq_len):
            logits = _lm_forward(ck.entropy_params, ck.entropy_config, jnp.asarray(x)[None])
            ce += _ce_sum(logits[0], y)
            n += len(y)
            lens = np.asarray(_lm_entropy_lengths(logits, jnp.asarray(x)[None]))[0]
            starts = np.cumsum(lens) - lens
            patches += int(((lens > 0) & (starts < len(y))).sum())
        np.testing.assert_allclose(res.bits_per_byte, ce / math.log(2) / n, rtol=2e-5)
        assert res.n_patches == patches
    assert rep.total.flops_per_byte == pytest.approx(ev.lm_flops_per_byte(ck.entropy_config, seq_len))


def test_flops_helpers():
    """mean_causal_context by hand; lm_flops_per_byte is checked against hand counts in test_flops.py."""
    assert ev.mean_causal_context(8, None) == pytest.approx(4.5)
    assert ev.mean_causal_context(8, 2) == pytest.approx((1 + 2 * 7) / 8)


def test_report_cli_three_files(fixture_dir, tmp_path, capsys):
    data = tmp_path / "texts"
    data.mkdir()
    (data / "eng.txt").write_text("All human beings are born free and equal in dignity and rights.\n", "utf-8")
    (data / "rus.txt").write_text("Все люди рождаются свободными и равными в своем достоинстве.\n", "utf-8")
    (data / "bad.txt").write_bytes(b"caf\xe9 \xff broken \xc3 utf-8\n")
    out = tmp_path / "report"
    rc = ev.main(["--checkpoint", str(fixture_dir), "--data", str(data), "--seq-len", "64", "--batch", "2",
                  "--report", "--out-dir", str(out), "--json", str(tmp_path / "r.json"), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "bits per byte" in printed and "TOTAL" in printed
    md = (out / "report.md").read_text("utf-8")
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 3 + 1  # header, three files, total
    assert any(r.startswith("| rus |") for r in rows) and any(r.startswith("| bad |") for r in rows)
    w, h = viz.png_size(out / "report.png")
    assert w == 1200 and h >= 250
    rep = json.loads((out / "report.json").read_text())
    by_name = {f["name"].rsplit("/", 1)[-1]: f for f in rep["files"]}
    assert rep["kind"] == "blt" and rep["patcher"]["mode"] == "entropy"
    assert by_name["rus.txt"]["bytes_per_char"] == pytest.approx(
        len("Все люди рождаются свободными и равными в своем достоинстве.\n".encode())
        / len("Все люди рождаются свободными и равными в своем достоинстве.\n"))
    assert by_name["bad.txt"]["n_chars"] == len(viz.split_utf8(b"caf\xe9 \xff broken \xc3 utf-8\n"))
    for f in rep["files"]:
        assert f["n_patches"] > 0 and f["bits_per_byte"] > 0 and f["flops_per_byte"] > 0
        assert f["patches_per_char"] == pytest.approx(f["n_patches"] / f["n_chars"])
    assert rep["entropy_flops_per_byte"] > 0
    assert json.loads((tmp_path / "r.json").read_text())["total"]["n_targets"] == rep["total"]["n_targets"]


def test_blt_entropy_patching_matches_pretrained(fixture_dir):
    """BLT + entropy model: eval's patching and logits agree with load_pretrained's on one window."""
    from bltjax.pretrained import load_pretrained

    text = "Hello, world! The quick brown fox jumps over the lazy dog."
    pre = load_pretrained(fixture_dir)
    ck = pretrained.open_checkpoint(fixture_dir)
    rep = ev.evaluate(ck, [("s0", [text.encode()])], seq_len=64, batch=2)  # same shapes as the report test
    tokens = documents.encode_document(text.encode())
    x, y = tokens[None, :-1], tokens[1:]
    logits = pre.logits(x)
    np.testing.assert_allclose(rep.total.ce_nats, _ce_sum(logits[0], y), rtol=1e-4)
    lengths = pre.patch(x)[0]
    assert rep.total.n_patches == int(((lengths > 0) & (np.cumsum(lengths) - lengths < x.shape[1])).sum())
