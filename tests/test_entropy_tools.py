"""Entropy patching tools: threshold calibration, patching figure / HTML, precomputed entropies.

Uses the fixture entropy model (tests/data/tiny-entropy/entropy_model: random weights with a scaled
output head, so entropies are spread out) on tiny samples.
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import shared_path

from bltjax import calibration, entropy_tools, viz
from bltjax.config import PatcherConfig
from bltjax.data import documents
from bltjax.model import entropy_model as entropy_lm
from bltjax.patcher import patch_lengths

TEXTS = [
    "All human beings are born free and equal in dignity and rights. They are endowed with reason.\n",
    "Alle Menschen sind frei und gleich an Würde und Rechten geboren. Sie sind mit Vernunft begabt.\n",
    "Все люди рождаются свободными и равными в своем достоинстве и правах.\n",
    "人人生而自由，在尊严和权利上一律平等。他们赋有理性和良心。\n",
    "सभी मनुष्यों को गौरव और अधिकारों के मामले में जन्मजात स्वतन्त्रता प्राप्त है।\n",
    "def f(x):\n    return x * 2  # doubles\n" * 3,
]


@pytest.fixture(scope="module")
def model(fixture_dir):
    return entropy_tools.load_entropy_model(fixture_dir / "entropy_model")


def _sample_docs(n_udhr_bytes: int = 1500) -> list[bytes]:
    docs = [t.encode() for t in TEXTS]
    udhr = shared_path("corpora", "udhr", "txt")  # 48 languages next to the repository; required in CI
    if udhr is not None:
        for key in ("eng", "rus", "cmn_hans", "hin", "amh", "arb", "tha"):
            f = udhr / f"{key}.txt"
            if f.is_file():
                docs.append(f.read_bytes()[:n_udhr_bytes])
    docs.append(np.random.default_rng(0).bytes(1500))  # random bytes: invalid UTF-8, NULs
    return docs


def _live_lengths(model, tokens_bn, pcfg, lengths_b=None, include_next_token=False):
    ent = entropy_lm.compute_entropies(model.params, model.config, PatcherConfig(), jnp.asarray(tokens_bn))
    lens, _ = patch_lengths(pcfg, jnp.asarray(tokens_bn), ent, include_next_token=include_next_token,
                            lengths_b=None if lengths_b is None else jnp.asarray(lengths_b))
    return np.asarray(lens), np.asarray(ent)


# ----------------------------------------------------------------------------- calibration


@pytest.mark.parametrize("mode,target", [("global", 4.5), ("monotonic", 3.0)])
def test_calibrate_hits_target(model, mode, target):
    docs = _sample_docs()
    res = entropy_tools.calibrate_threshold(model, docs, target=target, mode=mode, sample_bytes=None, seq_len=128)
    assert res.mode == mode and res.n_documents == len(docs)
    assert abs(res.bytes_per_patch - target) < 0.02 * target, entropy_tools.format_calibration(res)
    assert res.achievable[0] < target < res.achievable[1]
    # The reported size is what the real patcher gives at the returned threshold.
    tokens, lengths = documents.stream_windows(docs, 128)
    pcfg = entropy_tools.threshold_patcher(PatcherConfig(), res.threshold, mode)
    lens, ent = _live_lengths(model, tokens, pcfg, lengths)
    assert lens.sum() == lengths.sum() == res.n_tokens
    assert (lens > 0).sum() == res.n_patches
    assert sum(res.histogram.values()) == res.n_patches
    if mode == "global":  # independent count: starts at 0, 1 and every j in [2, S) with H_{j-1} > θ
        pos = np.arange(2, tokens.shape[1])[None, :]
        starts = np.minimum(lengths, 2).sum()
        starts += ((ent[:, 1:-1] > np.float32(res.threshold)) & (pos < lengths[:, None])).sum()
        assert starts == res.n_patches
    # Optimal among thresholds: the neighbouring candidate values bracket the target.
    cands = entropy_tools.threshold_candidates(ent, lengths, mode)
    k = int(np.searchsorted(cands, np.float32(res.threshold), side="right"))
    sizes = []
    for t in (cands[max(k - 2, 0)], cands[min(k, len(cands) - 1)]):
        lens_t, _ = _live_lengths(model, tokens, dataclass_replace(pcfg, float(t)), lengths)
        sizes.append(lens_t.sum() / (lens_t > 0).sum())
    assert all(abs(s - target) >= abs(res.bytes_per_patch - target) - 1e-9 for s in sizes)


def dataclass_replace(pcfg, threshold):
    import dataclasses

    return dataclasses.replace(pcfg, threshold=threshold)


def test_calibrate_cli(model, fixture_dir, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text(TEXTS[0] * 5 + TEXTS[2] * 3, encoding="utf-8")
    (data / "b.txt").write_bytes(b"caf\xe9 \xff\xfe invalid utf-8 \x00\x01" * 20)
    (data / "c.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "cal.json"
    rc = entropy_tools.main(["calibrate", "--entropy-model", str(fixture_dir / "entropy_model"), "--data", str(data),
                        "--target-bytes-per-patch", "3.5", "--seq-len", "128", "--sample-bytes", "3000",
                        "--reset-at-newline", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["sample_bytes"] <= 3000 + 1 and res["reset_at_newline"] is True
    assert abs(res["bytes_per_patch"] - 3.5) < 0.1
    assert f"--set model.patcher.threshold={res['threshold']!r}" in text
    assert "model.patcher.reset_context_at_newline=True" in text
    assert "patch length histogram" in text and ">=16" in text


def test_sample_documents_spreads_budget():
    big = [bytes([65 + i]) * 10_000 for i in range(10)]
    sample = documents.sample_documents(big, 20_000, min_doc_bytes=100)
    assert sum(map(len, sample)) == 20_000
    assert [s[:1] for s in sample] == [d[:1] for d in big]  # every file contributes its beginning
    small = [bytes([i]) * 50 for i in range(200)]
    sample = documents.sample_documents(small, 1000, min_doc_bytes=100)
    assert len(sample) == 20 and all(len(s) == 50 for s in sample)  # whole documents, seeded choice
    assert sample == documents.sample_documents(small, 1000, min_doc_bytes=100)
    assert documents.sample_documents(big, None) == big


def test_threshold_between_is_strict():
    lo, hi = np.float32(1.5), np.nextafter(np.float32(1.5), np.float32(2))
    t = calibration._threshold_between(float(lo), float(hi))
    assert lo <= np.float32(t) < hi


# ----------------------------------------------------------------------------- plot / html


def test_plot_boundaries_equal_patcher(model, expected, tmp_path):
    text = "Hello, world! The quick brown fox jumps over the lazy dog."
    out = tmp_path / "fig.png"
    theta = 1.5113499164581299  # the fixture's threshold
    data = entropy_tools.plot_text(model, text, out, threshold=theta, dpi=80)
    assert viz.png_size(out) == viz.figure_size_px(data.n_positions, 80) == (int(round((0.85 + 0.25 + 0.16 * 59) * 80)),
                                                                                272)
    np.testing.assert_array_equal(data.tokens, expected["s0_tokens"])
    # boundaries == the patcher's starts (independent call on the same tokens) == the official fixture's
    pcfg = PatcherConfig(mode="entropy", threshold=theta)
    lens, ent = _live_lengths(model, data.tokens[None], pcfg)
    lens = lens[0][lens[0] > 0]
    np.testing.assert_array_equal(data.patch_lengths, lens)
    np.testing.assert_array_equal(data.boundaries, np.cumsum(lens) - lens)
    official = expected["s0_patch_lengths"]
    official_starts = (np.cumsum(official) - official)
    np.testing.assert_array_equal(data.boundaries, official_starts[official_starts < len(data.tokens)])
    np.testing.assert_allclose(data.entropies, expected["s0_entropies"], atol=1e-4)
    # bars above the threshold are exactly the starts at positions >= 2
    above = np.flatnonzero(np.nan_to_num(data.scores, nan=-1) > theta)
    np.testing.assert_array_equal(above, data.boundaries[data.boundaries >= 2])


def test_plot_cli_html_non_ascii_and_invalid(fixture_dir, tmp_path, capsys):
    src = tmp_path / "in.bin"
    raw = "Grüße, 東京! Привет 🙂\n".encode() + b"bad \xff\xc3 end"
    src.write_bytes(raw)
    out = tmp_path / "p.png"
    rc = entropy_tools.main(["plot", "--entropy-model", str(fixture_dir / "entropy_model"), "--file", str(src),
                        "--out", str(out), "--html", "--threshold", "1.2"])
    assert rc == 0
    assert "patches" in capsys.readouterr().out
    n_tokens = len(raw) + 1
    assert viz.png_size(out) == viz.figure_size_px(n_tokens)
    page = (tmp_path / "p.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page
    body = page[page.index('id="patched-text"'):]
    import html as html_lib
    import re

    body = re.sub(r'<span class="cont"[^>]*>[^<]*</span>', "", body)  # markers of continuation-only patches
    visible = html_lib.unescape(re.sub(r"<[^>]+>", "", body.split(">", 1)[1]))
    for piece in ("Grüße, ", "東京", "Привет", "🙂", "bad ", "\\xFF", "\\xC3", " end"):
        assert piece in visible.replace("\u21b5\n", "\n"), piece


def test_byte_labels():
    labels = viz.byte_labels("aü東 \n".encode() + b"\xff" + "\u0301".encode())
    assert labels[0] == "a" and labels[1] == "ü" and labels[2] == ""
    assert labels[3] in ("東", "U+6771") and labels[4:6] == ["", ""]
    assert labels[6] == "\u2423" and labels[7] == "\u21b5" and labels[8] == "\\xFF"
    assert labels[9] in ("\u25cc\u0301", "U+0301") and labels[10] == ""
    assert viz.token_labels([1, 72, 2, 0]) == ["BOS", "D", "EOS", "PAD"]


# ----------------------------------------------------------------------------- precompute


def test_precompute_matches_live(model, tmp_path):
    from bltjax.data import DataConfig
    from bltjax.data.pipeline import full_stream_length, window_fn

    data = tmp_path / "corpus"
    data.mkdir()
    docs = [TEXTS[0].encode(), TEXTS[3].encode(), b"\xff\xfe raw bytes \xc3(", (TEXTS[1] * 3).encode()]
    for i, d in enumerate(docs):
        (data / f"d{i}.txt").write_bytes(d)
    cfg = DataConfig(source="text", path=str(data), allow_invalid_utf8=True)
    out32 = entropy_tools.precompute_entropies(model, cfg, tmp_path / "e32", dtype="float32", chunk_len=512)["train"]
    out16 = entropy_tools.precompute_entropies(model, str(data), tmp_path / "e16", chunk_len=128, overlap=64)["train"]
    assert out16.entropies.dtype == np.float16 and len(out16) == len(docs)
    assert out16.entropies.shape[0] == full_stream_length(cfg) == sum(len(d) + 2 for d in docs)
    pre = entropy_tools.load_precomputed(tmp_path / "e16")
    np.testing.assert_array_equal(pre.offsets, out16.offsets)

    # All documents as one right-padded batch: live entropies and the stored ones.
    lengths = np.array([len(d) + 2 for d in docs])
    n = 384
    assert lengths.max() > 128 and lengths.max() <= n  # the last document spans several 128-token chunks
    tokens = np.zeros((len(docs), n), np.int32)
    e32, e16 = np.zeros((2, len(docs), n), np.float32)
    for i, d in enumerate(docs):
        tokens[i, :lengths[i]] = documents.encode_document(d)
        e32[i, :lengths[i]], e16[i, :lengths[i]] = out32.document(i), pre.document(i)
    live = entropy_tools.row_entropies(model, tokens, batch_size=len(docs))
    real = np.arange(n)[None, :] < lengths[:, None]
    np.testing.assert_allclose(e32[real], live[real], atol=2e-5)
    first_chunk = real & (np.arange(n)[None, :] < 128)  # full context inside the first chunk
    np.testing.assert_allclose(e16[first_chunk], live[first_chunk], atol=4e-3, rtol=2e-3)
    # Later chunks see 64 tokens of warm-up context: positions 128..191 of the long document are the
    # entropies of the row tokens[64:192] (a restart, as the official 8192-token chunking does).
    i = int(np.argmax(lengths))
    ctx_row = entropy_tools.row_entropies(model, tokens[i:i + 1, 64:192])[0]
    np.testing.assert_allclose(e16[i, 128:192], ctx_row[64:128], atol=4e-3, rtol=2e-3)

    # Patches from stored entropies == patches from the live model, at a threshold inside a gap of
    # the entropy distribution (float16 rounding must not cross it).
    vals = np.sort(np.concatenate([live[first_chunk], e16[first_chunk]]))
    mid = vals[len(vals) // 4: 3 * len(vals) // 4]
    k = int(np.argmax(np.diff(mid)))
    pcfg = PatcherConfig(mode="entropy", threshold=float((mid[k] + mid[k + 1]) / 2))
    want = entropy_tools.rows_patch_lengths(pcfg, tokens, live, lengths, jit=True)
    np.testing.assert_array_equal(entropy_tools.rows_patch_lengths(pcfg, tokens, e32, lengths, jit=True), want)
    short = np.minimum(lengths, 128)
    np.testing.assert_array_equal(entropy_tools.rows_patch_lengths(pcfg, tokens, e16, short, jit=True),
                                  entropy_tools.rows_patch_lengths(pcfg, tokens, live, short, jit=True))
    assert (want.sum(axis=1) == lengths).all()

    # The training pipeline reads the same file through DataConfig.entropies_path.
    meta = json.loads((tmp_path / "e16" / "index.json").read_text())
    cfg_e = DataConfig(source="text", path=str(data), allow_invalid_utf8=True, split_rule="document",
                       val_fraction=0.0, shuffle=False, entropies_path=meta["entropies_path"])
    ex = window_fn(cfg_e, "train", 32)(1)
    np.testing.assert_array_equal(ex["entropies"], pre.stream(32, 64))


def test_calibrated_threshold_carries_over_to_training_patching_on_held_out_text(model):
    """Calibrate on the first 90 % of a corpus with the training row length; the trainer's own
    on-device patching (``train_step.patch_batch``: rows of seq_len bytes, first patch 1, next-byte
    position) then gives the target mean patch size within 5 % on the other 10 %."""
    import dataclasses

    from bltjax import train_step
    from bltjax.config import BLTConfig
    from bltjax.data.embedded import generated_documents
    from bltjax.train_config import TrainConfig

    stream = b"".join(generated_documents(num_docs=300).docs)
    cut = int(0.9 * len(stream))
    seq_len, target = 128, 3.0
    res = entropy_tools.calibrate_threshold(model, [stream[:cut]], target=target, sample_bytes=None,
                                       seq_len=seq_len)
    assert abs(res.bytes_per_patch / target - 1) < 0.02
    held_out = np.frombuffer(stream[cut:], np.uint8).astype(np.int32) + 4  # byte b -> token b + 4
    rows = jnp.asarray(held_out[: len(held_out) // seq_len * seq_len].reshape(-1, seq_len))
    assert rows.shape[0] >= 20

    def training_size(threshold: float) -> float:
        pcfg = dataclasses.replace(model.patcher, mode="entropy", threshold=threshold, max_patches=seq_len + 1)
        cfg = TrainConfig(model=BLTConfig(entropy_model=model.config, patcher=pcfg, max_seqlen=seq_len + 1),
                          seq_len=seq_len, global_batch_size=1)
        _, stats = train_step.patch_batch(cfg, rows, model.params)
        return float(stats["n_positions_sum"] / stats["n_patches_sum"])

    assert abs(training_size(res.threshold) / target - 1) < 0.05
    assert abs(training_size(res.threshold * 1.1) / target - 1) > 0.05  # the threshold is what matters


def test_entropy_file_reader_checks_the_format_tag(tmp_path):
    """The one entropies reader refuses a precompute directory written in another format."""
    from bltjax.data import entropy_file

    np.save(tmp_path / "entropies_train.npy", np.zeros(5, np.float16))
    np.testing.assert_array_equal(entropy_file.open_entropies(tmp_path / "entropies_train.npy"), np.zeros(5))
    (tmp_path / "index.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="unknown format 'something-else'"):
        entropy_file.open_entropies(tmp_path / "entropies_train.npy")


def test_deprecated_patching_alias_forwards():
    import importlib
    import sys

    sys.modules.pop("bltjax.patching", None)
    with pytest.warns(DeprecationWarning, match="bltjax.entropy_tools"):
        patching = importlib.import_module("bltjax.patching")
    assert patching.main is entropy_tools.main
    assert patching.open_checkpoint.__module__ == "bltjax.pretrained"
