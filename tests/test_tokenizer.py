"""Byte tokenizer: ids, round trips, batching, validation (design §1)."""

import numpy as np
import pytest

from bltjax import tokenizer as tk

FIXTURE_TEXTS = {
    0: "Hello, world! The quick brown fox jumps over the lazy dog.",
    1: "Grüße aus München: naïve café, 東京タワー, Привет мир! 🙂",
    2: "def f(x):\n    return x * 2  # doubles\n",
}


def test_constants():
    assert (tk.BOE_ID, tk.BOS_ID, tk.EOS_ID, tk.BPE_ID, tk.OFFSET, tk.PAD_ID) == (0, 1, 2, 3, 4, -1)
    assert tk.VOCAB_SIZE == 260


def test_encode_ascii_and_specials():
    ids = tk.encode("Ab")
    assert ids.dtype == np.int32
    assert ids.tolist() == [1, ord("A") + 4, ord("b") + 4]
    assert tk.encode("Ab", add_bos=False, add_eos=True).tolist() == [ord("A") + 4, ord("b") + 4, 2]
    assert tk.encode("", add_bos=True, add_eos=True).tolist() == [1, 2]
    assert tk.encode("", add_bos=False).shape == (0,)


def test_encode_utf8_multibyte():
    ids = tk.encode("é東", add_bos=False)
    assert ids.tolist() == [b + 4 for b in "é東".encode()]


@pytest.mark.parametrize("i", sorted(FIXTURE_TEXTS))
def test_encode_matches_fixture(expected, i):
    np.testing.assert_array_equal(tk.encode(FIXTURE_TEXTS[i]), expected[f"s{i}_tokens"])


def test_encode_packed_fixture_row(expected):
    row = np.concatenate([tk.encode("First doc ends here.", add_eos=True),
                          tk.encode("Zweites Dokument: ελληνικά ok")])
    np.testing.assert_array_equal(row, expected["s3_tokens"])


def test_all_bytes_round_trip_including_invalid_utf8():
    raw = bytes(range(256)) + b"\xff\xfe\xc3"  # invalid UTF-8 on purpose
    ids = tk.encode(raw, add_bos=True, add_eos=True)
    assert ids.min() >= 0 and ids.max() == 259
    assert tk.decode(ids) == raw
    assert tk.encode(bytearray(raw), add_bos=False).tolist() == [b + 4 for b in raw]
    assert tk.encode(memoryview(raw), add_bos=False).shape == (len(raw),)


def test_decode_drops_specials_and_padding():
    ids = [1, 0, ord("h") + 4, 2, 3, -1, ord("i") + 4, -1]
    assert tk.decode(ids) == b"hi"
    assert tk.decode(np.array(ids, np.int64)) == b"hi"
    assert tk.decode([]) == b""


def test_decode_text_errors_mode():
    ids = tk.encode(b"a\xc3", add_bos=False)  # truncated 2-byte sequence
    assert tk.decode_text(ids) == "a\ufffd"
    assert tk.decode_text(ids, errors="ignore") == "a"
    assert tk.decode_text(tk.encode(FIXTURE_TEXTS[1])) == FIXTURE_TEXTS[1]


def test_decode_rejects_bad_input():
    with pytest.raises(ValueError, match="outside"):
        tk.decode([5, 260])
    with pytest.raises(ValueError, match="1-D"):
        tk.decode(np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match="integer"):
        tk.decode(np.array([4.0, 5.0]))
    with pytest.raises(TypeError):
        tk.encode(123)


def test_encode_batch_pads_with_boe():
    toks, lens = tk.encode_batch(["ab", "", "xyz"], add_eos=True)
    assert toks.dtype == np.int32 and lens.dtype == np.int32
    assert toks.shape == (3, 5)
    assert lens.tolist() == [4, 2, 5]
    assert toks[0].tolist() == [1, ord("a") + 4, ord("b") + 4, 2, 0]
    assert toks[1].tolist() == [1, 2, 0, 0, 0]
    for row, n, text in zip(toks, lens, ["ab", "", "xyz"]):
        assert tk.decode(row[:n]) == text.encode()
    toks8, _ = tk.encode_batch([b"\x00\xff"], pad_to=8)
    assert toks8.tolist() == [[1, 4, 259, 0, 0, 0, 0, 0]]
    with pytest.raises(ValueError, match="pad_to"):
        tk.encode_batch(["abcdef"], pad_to=3)
    empty, empty_lens = tk.encode_batch([])
    assert empty.shape == (0, 0) and empty_lens.shape == (0,)


def test_check_tokens():
    tk.check_tokens(np.array([[1, 4, 259, 0]]))
    tk.check_tokens(np.array([1, 2, 3]), max_len=3)
    with pytest.raises(ValueError, match=r"token id 260 at index \(0, 2\)"):
        tk.check_tokens(np.array([[1, 4, 260]]))
    with pytest.raises(ValueError, match="PAD_ID"):
        tk.check_tokens(np.array([1, -1]))
    with pytest.raises(ValueError, match="exceeds the maximum of 3"):
        tk.check_tokens(np.array([1, 4, 5, 6]), max_len=3)
    with pytest.raises(ValueError, match="integers"):
        tk.check_tokens(np.array([1.0, 4.0]))
