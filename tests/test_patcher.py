"""Patcher: every mode of design §3 against the official fixture and a slow pure-Python reference,
plus patch ids / decoder ids / global tokens (design §7-§9)."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bltjax import patcher as P
from bltjax.config import PatcherConfig
from bltjax.tokenizer import encode


@pytest.fixture(scope="module")
def fixture_threshold(fixture_dir) -> float:
    params = json.loads((fixture_dir / "params.json").read_text())
    return params["data"]["patcher_args"]["threshold"]


@functools.cache
def _jit_patch_lengths(pcfg, include_next_token, max_patches):
    return jax.jit(functools.partial(P.patch_lengths, pcfg, include_next_token=include_next_token,
                                     max_patches=max_patches))


def _lengths(pcfg, tokens, entropies=None, include_next_token=True, max_patches=None, lengths_b=None,
             jit=True):
    """patch_lengths as numpy, jitted by default.  The many-config property test runs eagerly instead:
    eager op compilations are shared between configs of the same shape (fast on 2 cores)."""
    if jit:
        fn = _jit_patch_lengths(pcfg, include_next_token, max_patches)
    else:
        fn = functools.partial(P.patch_lengths, pcfg, include_next_token=include_next_token,
                               max_patches=max_patches)
    out, overflow = fn(jnp.asarray(tokens), None if entropies is None else jnp.asarray(entropies),
                       lengths_b=None if lengths_b is None else jnp.asarray(lengths_b))
    return np.asarray(out), np.asarray(overflow)


@functools.partial(jax.jit, static_argnums=1)
def _ids(lengths_bp, n):
    return P.patch_ids_from_lengths(lengths_bp, n), P.decoder_patch_ids(lengths_bp, n)


@functools.partial(jax.jit, static_argnums=2)
def _global_tokens(tokens_bn, patch_ids_bn, n_patches):
    return P.global_patch_tokens(tokens_bn, patch_ids_bn, n_patches)


# --------------------------------------------------------------------------- slow reference


def ref_patch_lengths(pcfg, tokens, entropies, seq_len, include_next_token):
    """Obviously-correct list version of design §3.1/§3.2 for ONE row (first ``seq_len`` tokens)."""
    s = seq_len
    total = s + int(include_next_token)
    x = [int(v) for v in tokens[:s]]
    h = None if entropies is None else [np.float32(v) for v in entropies[:s]]
    starts = [0, 1]
    if pcfg.mode == "byte":
        starts = list(range(total))
    elif pcfg.mode == "static":
        starts = list(range(0, total, int(pcfg.patch_size)))
    elif pcfg.mode == "space":
        def space_like(t):
            c = t - 4
            return (c < ord("0") or ord("9") < c < ord("A") or ord("Z") < c < ord("a")
                    or ord("z") < c < 0x80 or c >= 0xC0)
        for j in range(2, s + 1):
            i = j - 1
            counts = (space_like(x[i]) and not space_like(x[i - 1])) or x[i] < 4
            if counts:
                starts.append(j)
    elif pcfg.mode == "bpe":
        starts += [j + 1 for j in range(s - 1) if x[j] == 3]
    elif pcfg.threshold is None:
        k = max(int(s // pcfg.patch_size) - 2, 0)
        best = sorted(range(1, s), key=lambda m: -h[m])[:k]
        starts += [m + 1 for m in best]
    elif pcfg.monotonicity:
        starts += [2] + [j for j in range(3, s + 1) if h[j - 1] - h[j - 2] > pcfg.threshold]
    elif pcfg.threshold_add is not None:
        starts += [2] + [j for j in range(4, s + 1)
                         if h[j - 1] - h[j - 2] > pcfg.threshold_add and h[j - 1] > pcfg.threshold]
    else:
        starts += [j for j in range(2, s + 1) if h[j - 1] > pcfg.threshold]
    starts = sorted({p for p in starts if p < total})
    lengths = [b - a for a, b in zip(starts, starts[1:] + [total])]
    if pcfg.max_patch_length is not None:
        m, split = pcfg.max_patch_length, []
        for length in lengths:
            split += [m] * (length // m) + ([length % m] if length % m else [])
        lengths = split
    return lengths


def ref_patch_ids(lengths, n):
    """The official formula: pid(i) = #{p : start_p <= i} - 1, start = [0, cumsum(lengths)]."""
    cum = np.concatenate([[0], np.cumsum(lengths)])
    return np.array([(cum <= i).sum() - 1 for i in range(n)])


# --------------------------------------------------------------------------- fixture


@pytest.mark.parametrize("i", range(4))
def test_fixture_patching_exact(expected, fixture_threshold, i):
    pcfg = PatcherConfig(threshold=fixture_threshold)
    tokens = expected[f"s{i}_tokens"][None]
    ents = expected[f"s{i}_entropies"][None]
    n = tokens.shape[1]
    lengths, overflow = _lengths(pcfg, tokens, ents)
    assert lengths.shape == (1, n + 1) and not overflow.any()
    trimmed = P.trim_lengths(lengths)
    np.testing.assert_array_equal(trimmed[0], expected[f"s{i}_patch_lengths"])
    assert trimmed.sum() == n + 1 and trimmed[0, 0] == 1
    # ids are identical whether computed from the padded or the trimmed lengths
    for lens in (lengths, trimmed):
        pid, dpid = (np.asarray(a) for a in _ids(jnp.asarray(lens), n))
        np.testing.assert_array_equal(pid[0], expected[f"s{i}_patch_ids"])
        np.testing.assert_array_equal(dpid[0], expected[f"s{i}_decoder_patch_ids"])
    gtok = _global_tokens(jnp.asarray(tokens), jnp.asarray(pid), trimmed.shape[1])
    np.testing.assert_array_equal(np.asarray(gtok)[0], expected[f"s{i}_global_tokens"])


def test_fixture_global_tokens_mark_eos_patch(expected):
    gtok = expected["s3_global_tokens"]
    assert gtok.tolist().count(2) == 1  # s3 packs two documents: exactly one EOS patch


def test_fixture_batch(expected, fixture_threshold):
    pcfg = PatcherConfig(threshold=fixture_threshold)
    tokens = expected["batch_tokens"]
    ents = np.stack([expected["s0_entropies"][:40], expected["s1_entropies"][:40]])
    lengths, overflow = _lengths(pcfg, tokens, ents)
    np.testing.assert_array_equal(P.trim_lengths(lengths), expected["batch_patch_lengths"])
    assert not overflow.any()


def test_fixture_rows_right_padded(expected, fixture_threshold):
    """Rows of different lengths in one padded batch patch exactly like the rows alone."""
    pcfg = PatcherConfig(threshold=fixture_threshold)
    idx = [0, 2, 3]
    n = 64
    tokens = np.zeros((3, n), np.int32)
    ents = np.full((3, n), 99.0, np.float32)  # garbage beyond each row must be ignored
    lens = []
    for r, i in enumerate(idx):
        t = expected[f"s{i}_tokens"]
        tokens[r, : len(t)] = t
        ents[r, : len(t)] = expected[f"s{i}_entropies"]
        lens.append(len(t))
    lengths, _ = _lengths(pcfg, tokens, ents, lengths_b=np.array(lens, np.int32))
    pids = np.asarray(_ids(jnp.asarray(lengths), n)[0])
    for r, i in enumerate(idx):
        want = expected[f"s{i}_patch_lengths"]
        np.testing.assert_array_equal(lengths[r, : len(want)], want)
        assert (lengths[r, len(want):] == 0).all() and lengths[r].sum() == lens[r] + 1
        np.testing.assert_array_equal(pids[r, : lens[r]], expected[f"s{i}_patch_ids"])


def test_entropies_from_fixture_logits(expected):
    logits = [expected[f"s{i}_entropy_model_logits"] for i in range(4)]
    n = max(len(x) for x in logits)
    batch = np.zeros((4, n, 260), np.float32)
    for r, x in enumerate(logits):
        batch[r, : len(x)] = x
    got = np.asarray(P.entropies_from_logits(jnp.asarray(batch)))
    assert got.dtype == np.float32 and got.shape == (4, n)
    for r in range(4):
        np.testing.assert_allclose(got[r, : len(logits[r])], expected[f"s{r}_entropies"], atol=2e-5, rtol=1e-5)
    bf16 = P.entropies_from_logits(jnp.asarray(batch, jnp.bfloat16), in_logits_dtype=True)
    assert bf16.dtype == jnp.float32
    # bf16 logits and bf16 arithmetic: relative rounding 2^-9 on entropies up to ~2.7 nats through a
    # handful of roundings (logits, log-softmax, products, the 260-term sum); measured max 0.037
    for r in range(4):
        err = np.abs(np.asarray(bf16)[r, : len(logits[r])] - expected[f"s{r}_entropies"])
        assert 1e-3 < err.max() < 0.06, (r, err.max())  # > 1e-3: the arithmetic really is bf16


def test_entropy_uniform_and_peaked():
    logits = jnp.stack([jnp.zeros(260), jnp.array([50.0] + [0.0] * 259)])[None]
    h = np.asarray(P.entropies_from_logits(logits))
    np.testing.assert_allclose(h[0], [np.log(260.0), 0.0], atol=1e-5)


# --------------------------------------------------------------------------- documented examples


def _pieces(text, lengths):
    """Split the byte string of ``[BOS] + text`` (+ virtual '|') by patch lengths."""
    data = [b"<s>"] + [bytes([c]) for c in text.encode()] + [b"|"]
    out, pos = [], 0
    for length in lengths:
        out.append(b"".join(data[pos: pos + length]))
        pos += length
    return out


def test_space_mode_hello_example():
    text = "Hello, world!!  ab-cd"
    lengths, _ = _lengths(PatcherConfig(mode="space"), encode(text)[None])
    trimmed = P.trim_lengths(lengths)[0]
    assert _pieces(text, trimmed) == [b"<s>", b"Hello,", b" world!", b"!  ab-", b"cd|"]


def test_space_mode_utf8_lead_bytes_split():
    text = "Grüße 東京"
    lengths, _ = _lengths(PatcherConfig(mode="space"), encode(text)[None])
    assert _pieces(text, P.trim_lengths(lengths)[0]) == [
        b"<s>", b"Gr\xc3", b"\xbc\xc3", b"\x9fe ", b"\xe6\x9d\xb1\xe4", b"\xba\xac|"]


def test_space_mode_specials_always_count():
    tokens = np.concatenate([encode("ab", add_eos=True), encode("cd")])[None]  # [BOS a b EOS BOS c d]
    lengths, _ = _lengths(PatcherConfig(mode="space"), tokens, include_next_token=False)
    assert P.trim_lengths(lengths)[0].tolist() == [1, 3, 1, 2]


def test_bpe_mode():
    tokens = np.array([[1, 10, 3, 11, 12, 3, 13, 3]], np.int32)
    for inc, want in ((True, [1, 2, 3, 3]), (False, [1, 2, 3, 2])):
        lengths, _ = _lengths(PatcherConfig(mode="bpe"), tokens, include_next_token=inc)
        assert P.trim_lengths(lengths)[0].tolist() == want


def test_byte_and_static_modes():
    tokens = encode("abcdefghij")[None]  # S = 11
    lengths, _ = _lengths(PatcherConfig(mode="byte"), tokens)
    assert P.trim_lengths(lengths)[0].tolist() == [1] * 12
    lengths, _ = _lengths(PatcherConfig(mode="static", patch_size=4), tokens)
    assert P.trim_lengths(lengths)[0].tolist() == [4, 4, 4]
    lengths, _ = _lengths(PatcherConfig(mode="static", patch_size=5), tokens, include_next_token=False)
    assert P.trim_lengths(lengths)[0].tolist() == [5, 5, 1]


def test_global_threshold_strict_and_virtual_patch():
    h = np.array([[9.0, 0.0, 2.0, 1.0, 3.0]], np.float32)  # H_0 unused; threshold 1.0 (strict)
    tokens = np.full((1, 5), 100, np.int32)
    pcfg = PatcherConfig(threshold=1.0)
    lengths, _ = _lengths(pcfg, tokens, h, include_next_token=True)
    # starts: 0, 1, 3 (H_2=2>1), 4? H_3=1 not > 1, 5 (virtual, H_4=3>1)
    assert P.trim_lengths(lengths)[0].tolist() == [1, 2, 2, 1]
    lengths, _ = _lengths(pcfg, tokens, h, include_next_token=False)
    assert P.trim_lengths(lengths)[0].tolist() == [1, 2, 2]


def test_global_monotonic_position_three_never_starts():
    h = np.array([[0.0, 0.0, 5.0, 9.0, 9.5, 20.0]], np.float32)
    tokens = np.full((1, 6), 100, np.int32)
    pcfg = PatcherConfig(threshold=1.0, threshold_add=0.1)
    lengths, _ = _lengths(pcfg, tokens, h, include_next_token=True)
    # 0, 1, 2 forced; 3 (H_2-H_1=5) blocked by the artefact; 4 (H_3-H_2=4); 5 (0.5); 6 (10.5)
    assert P.trim_lengths(lengths)[0].tolist() == [1, 1, 2, 1, 1, 1]


# --------------------------------------------------------------------------- property tests vs reference

_CONFIGS = [
    PatcherConfig(threshold=1.1),
    PatcherConfig(threshold=0.3, monotonicity=True),
    PatcherConfig(threshold=1.1, threshold_add=0.3),
    PatcherConfig(threshold=1.1, threshold_add=0.3, monotonicity=True),  # monotonicity wins
    PatcherConfig(threshold=None, patch_size=4.5),
    PatcherConfig(threshold=None, patch_size=3),
    PatcherConfig(threshold=1.1, max_patch_length=3),
    PatcherConfig(mode="space"),
    PatcherConfig(mode="space", max_patch_length=2),
    PatcherConfig(mode="bpe"),
    PatcherConfig(mode="byte"),
    PatcherConfig(mode="static", patch_size=3),
]


def _random_batch(seed, b=5, n=33):
    rng = np.random.default_rng(seed)
    # bytes biased to spaces/punctuation/UTF-8 so every space rule fires; some specials (0..3)
    alphabet = np.array([32, 44, 45, 97, 98, 65, 48, 0xC3, 0xA9, 0xE6, 0x9D, 0x80] * 3 + [-4, -2, -1])
    tokens = rng.choice(alphabet, size=(b, n)) + 4
    tokens[:, 0] = 1
    # distinct values on a 1/8 grid: exact differences, no ties for top-k, nothing equal to a threshold
    ents = np.stack([rng.permutation(n) for _ in range(b)]).astype(np.float32) / 8.0
    seq = np.array([n, n - 1, 7, 2, 1], np.int32)  # right-padded rows, down to a lone BOS
    return tokens.astype(np.int32), ents, seq


@pytest.mark.parametrize("ci", range(len(_CONFIGS)))
@pytest.mark.parametrize("include_next_token", [True, False])
def test_modes_match_reference(ci, include_next_token):
    pcfg = _CONFIGS[ci]
    tokens, ents, seq = _random_batch(10 * ci + int(include_next_token))
    n = tokens.shape[1]
    lengths, overflow = _lengths(pcfg, tokens, ents, include_next_token=include_next_token, lengths_b=seq,
                                 jit=False)
    assert lengths.shape == (tokens.shape[0], n + 1) and not overflow.any()
    for r in range(tokens.shape[0]):
        want = ref_patch_lengths(pcfg, tokens[r], ents[r], int(seq[r]), include_next_token)
        got = lengths[r]
        assert got[: len(want)].tolist() == want, (r, got.tolist(), want)
        assert (got[len(want):] == 0).all()
        assert got.sum() == seq[r] + include_next_token  # rows sum to their own S'


def test_fixture_monotonic_variants_vs_reference(expected):
    """Monotonic / global+monotonic / fixed-count modes on the real fixture entropies (one padded batch)."""
    rows = [(expected[f"s{i}_tokens"], expected[f"s{i}_entropies"]) for i in range(4)]
    n = max(len(t) for t, _ in rows)
    tokens = np.zeros((4, n), np.int32)
    ents = np.zeros((4, n), np.float32)
    for r, (t, e) in enumerate(rows):
        tokens[r, : len(t)], ents[r, : len(e)] = t, e
    seq = np.array([len(t) for t, _ in rows], np.int32)
    for pcfg in (PatcherConfig(threshold=0.5, monotonicity=True),
                 PatcherConfig(threshold=1.5, threshold_add=0.25),
                 PatcherConfig(threshold=None, patch_size=4)):
        lengths, _ = _lengths(pcfg, tokens, ents, lengths_b=seq)
        for r, (t, e) in enumerate(rows):
            want = ref_patch_lengths(pcfg, t, e, len(t), True)
            assert lengths[r, : len(want)].tolist() == want and lengths[r, len(want):].sum() == 0


def test_max_patch_length_splitting():
    starts = np.zeros((1, 16), bool)
    starts[0, [0, 1, 12]] = True  # lengths [1, 11, 3] for total 15
    for m, want in ((4, [1, 4, 4, 3, 3]), (3, [1, 3, 3, 3, 2, 3]), (11, [1, 11, 3]), (1, [1] * 15)):
        lengths, n_p, overflow = P.lengths_from_starts(jnp.asarray(starts), jnp.array([15]), 16, m)
        assert P.trim_lengths(lengths)[0].tolist() == want
        assert int(n_p[0]) == len(want) and not bool(overflow[0])


def test_overflow_truncates_and_keeps_sums():
    tokens = encode("abcdefghij")[None]  # byte mode: 12 patches with the virtual byte
    lengths, overflow = _lengths(PatcherConfig(mode="byte"), tokens, max_patches=5)
    assert lengths.tolist() == [[1, 1, 1, 1, 8]] and overflow.tolist() == [True]
    lengths, overflow = _lengths(PatcherConfig(mode="byte"), tokens, max_patches=12)
    assert lengths.tolist() == [[1] * 12] and overflow.tolist() == [False]
    starts = P.patch_start_mask(PatcherConfig(mode="byte"), tokens, include_next_token=True)
    _, n_p, ov = P.lengths_from_starts(starts, jnp.array([12]), 5)
    assert int(n_p[0]) == 5 and bool(ov[0])


def test_config_max_patches_is_default():
    tokens = encode("abcdefghij")[None]
    lengths, overflow = P.patch_lengths(PatcherConfig(mode="byte", max_patches=4), tokens)
    assert lengths.shape == (1, 4) and bool(overflow[0])
    assert int(lengths.sum()) == 12


def test_start_mask_shape_and_padding():
    tokens = np.array([[1, 40, 36, 50, 0, 0]], np.int32)
    mask = np.asarray(P.patch_start_mask(PatcherConfig(mode="byte"), tokens, include_next_token=True,
                                         lengths_b=jnp.array([4])))
    assert mask.shape == (1, 7) and mask.dtype == bool
    assert mask[0].tolist() == [True] * 5 + [False] * 2
    mask = np.asarray(P.patch_start_mask(PatcherConfig(mode="byte"), tokens, include_next_token=False))
    assert mask[0].tolist() == [True] * 6 + [False]


def test_jit_equals_eager():
    tokens, ents, seq = _random_batch(99)
    for pcfg in (PatcherConfig(threshold=1.1, max_patch_length=4), PatcherConfig(threshold=None)):
        eager, ov_e = P.patch_lengths(pcfg, jnp.asarray(tokens), jnp.asarray(ents), lengths_b=jnp.asarray(seq))
        jitted, ov_j = _lengths(pcfg, tokens, ents, lengths_b=seq, jit=True)
        np.testing.assert_array_equal(np.asarray(eager), jitted)
        np.testing.assert_array_equal(np.asarray(ov_e), ov_j)
    n = tokens.shape[1]
    pid, dpid = _ids(jnp.asarray(jitted), n)
    np.testing.assert_array_equal(np.asarray(pid), np.asarray(P.patch_ids_from_lengths(jitted, n)))
    np.testing.assert_array_equal(np.asarray(dpid), np.asarray(P.decoder_patch_ids(jitted, n)))


# --------------------------------------------------------------------------- ids and global tokens


def test_patch_ids_match_official_formula_with_zero_padding():
    lengths = np.array([[1, 3, 2, 0, 0], [1, 1, 1, 1, 2], [1, 2, 0, 0, 0]], np.int32)
    n = 7  # row 2 sums to 3 < n: positions past the end count the zero-length padding columns
    pid = np.asarray(P.patch_ids_from_lengths(jnp.asarray(lengths), n))
    dpid = np.asarray(P.decoder_patch_ids(jnp.asarray(lengths), n))
    for r in range(3):
        np.testing.assert_array_equal(pid[r], ref_patch_ids(lengths[r], n))
        np.testing.assert_array_equal(dpid[r], ref_patch_ids(lengths[r, 1:], n))
    assert pid[0].tolist() == [0, 1, 1, 1, 2, 2, 5]
    assert dpid[0].tolist() == [0, 0, 0, 1, 1, 4, 4]


def test_global_patch_tokens():
    tokens = np.array([[1, 10, 2, 1, 11, 12, 2]], np.int32)
    lengths = np.array([[1, 2, 3, 1, 1, 0]], np.int32)
    pid = P.patch_ids_from_lengths(jnp.asarray(lengths), 7)
    g = np.asarray(P.global_patch_tokens(jnp.asarray(tokens), pid, 6))
    assert g.tolist() == [[0, 2, 0, 2, 0, 0]]
    g = np.asarray(P.global_patch_tokens(jnp.asarray(tokens), pid, 3))  # ids >= 3 ignored
    assert g.tolist() == [[0, 2, 0]]


def test_trim_lengths():
    assert P.trim_lengths(np.array([[1, 2, 0, 0], [1, 0, 0, 0]])).tolist() == [[1, 2], [1, 0]]
    assert P.trim_lengths(np.zeros((2, 3), np.int32)).shape == (2, 0)


def test_bad_inputs():
    tokens = np.zeros((1, 4), np.int32)
    with pytest.raises(ValueError, match="entropies"):
        P.patch_lengths(PatcherConfig(), tokens)
    with pytest.raises(ValueError, match="shape"):
        P.patch_lengths(PatcherConfig(), tokens, np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="lengths_b"):
        P.patch_lengths(PatcherConfig(mode="byte"), tokens, lengths_b=jnp.array([1, 2]))
    with pytest.raises(ValueError, match="unknown patching mode"):
        P.patch_lengths(PatcherConfig(mode="nope"), tokens)
    with pytest.raises(ValueError, match="max_patch_length"):
        P.lengths_from_starts(jnp.ones((1, 5), bool), jnp.array([5]), 5, 0)
