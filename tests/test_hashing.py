"""Hash n-gram ids: bit-exact vs the official fixture and a big-integer reference (design §4)."""

import functools

import jax
import numpy as np
import pytest

from bltjax.model.hashing import PRIMES, hash_ids, hash_ids_reference

FIXTURE_SIZES = (3, 4, 5, 6, 7, 8)
_hash_jit = jax.jit(hash_ids, static_argnums=(1, 2, 3))


def test_x64_is_off():
    assert not jax.config.jax_enable_x64


def test_primes_table():
    assert len(PRIMES) == 11 and PRIMES[0] == 1000000007 and PRIMES[-1] == 3367900313


@pytest.mark.parametrize("i", range(4))
def test_fixture_hash_ids_exact(expected, i):
    tokens = expected[f"s{i}_tokens"][None]
    want = expected[f"s{i}_hash_ids"]  # [T, N]
    got = _hash_jit(tokens, FIXTURE_SIZES, 1, 257)
    assert got.dtype == np.int32 and got.shape == (1, 6, tokens.shape[1])
    np.testing.assert_array_equal(np.asarray(got)[0], want)
    np.testing.assert_array_equal(hash_ids_reference(tokens[0], FIXTURE_SIZES, 1, 257), want)


def test_fixture_batched_with_right_padding(expected):
    rows = [expected[f"s{i}_tokens"] for i in range(4)]
    n = max(len(r) for r in rows)
    batch = np.zeros((4, n), np.int32)
    for i, r in enumerate(rows):
        batch[i, : len(r)] = r
    got = np.asarray(_hash_jit(batch, FIXTURE_SIZES, 1, 257))
    for i, r in enumerate(rows):  # hashes are causal: right padding cannot change earlier ids
        np.testing.assert_array_equal(got[i, :, : len(r)], expected[f"s{i}_hash_ids"])


@functools.cache
def _random_tokens(seed: int, b: int = 2, n: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    toks = rng.integers(0, 260, size=(b, n)).astype(np.int32)
    toks[0, -10:] = 259  # extreme values
    return toks


@pytest.mark.parametrize("vocab", [257, 30000, 500002, 2**31 - 1, 1, 65536])
@pytest.mark.parametrize("nb_functions", [1, 3])
def test_matches_reference(vocab, nb_functions):
    toks = _random_tokens(vocab % 97)
    sizes = (1, 3, 8)
    got = np.asarray(_hash_jit(toks, sizes, nb_functions, vocab))
    want = hash_ids_reference(toks, sizes, nb_functions, vocab)
    assert got.shape == (2, nb_functions * len(sizes), toks.shape[1])
    assert got.min() >= 0 and got.max() < vocab
    np.testing.assert_array_equal(got, want)


def test_all_primes_and_extreme_tokens():
    toks = np.full((1, 16), 259, np.int32)
    toks[0, :3] = [1, 0, 258]
    sizes = (2, 5, 8, 12)
    got = np.asarray(_hash_jit(toks, sizes, len(PRIMES), 500002))
    np.testing.assert_array_equal(got, hash_ids_reference(toks, sizes, len(PRIMES), 500002))


def test_negative_values_are_exercised():
    # Make sure the signed (negative int64) branch of the floor-mod is actually hit.
    toks = _random_tokens(3)
    hit_negative = False
    for p in PRIMES[:3]:
        x = [int(v) for v in toks[0]]
        for i in range(7, len(x)):
            h = 0
            for j, w in enumerate(x[i - 7: i + 1]):
                h = (h + w * pow(p, j, 1 << 64)) % (1 << 64)
            hit_negative |= h >= 1 << 63
    assert hit_negative


def test_negative_tokens_sign_extended():
    toks = np.array([[1, -1, 5, -7, 259, 0]], np.int32)  # e.g. PAD_ID leaking in
    got = np.asarray(_hash_jit(toks, (2, 3), 2, 30000))
    np.testing.assert_array_equal(got, hash_ids_reference(toks, (2, 3), 2, 30000))


def test_table_order_function_major():
    toks = _random_tokens(7)
    sizes = (3, 4)
    three = np.asarray(_hash_jit(toks, sizes, 3, 30000))
    for f in range(3):
        for gi, n in enumerate(sizes):
            t = f * len(sizes) + gi
            single = hash_ids_reference(toks, (n,), f + 1, 30000)[:, f]
            np.testing.assert_array_equal(three[:, t], single)


def test_eager_equals_jit():
    toks = _random_tokens(11)
    np.testing.assert_array_equal(np.asarray(hash_ids(toks, (3, 5), 2, 500002)),
                                  np.asarray(_hash_jit(toks, (3, 5), 2, 500002)))


def test_bad_arguments():
    toks = np.zeros((1, 4), np.int32)
    with pytest.raises(ValueError, match="group_sizes"):
        hash_ids(toks, (), 1, 10)
    with pytest.raises(ValueError, match="group_sizes"):
        hash_ids(toks, (0, 3), 1, 10)
    with pytest.raises(ValueError, match="nb_functions"):
        hash_ids(toks, (3,), 12, 10)
    with pytest.raises(ValueError, match="vocab"):
        hash_ids(toks, (3,), 1, 2**31)
    with pytest.raises(ValueError, match=r"\[B, N\]"):
        hash_ids(toks[0], (3,), 1, 10)
    with pytest.raises(ValueError, match="integer"):
        hash_ids(toks.astype(np.float32), (3,), 1, 10)
