"""Data layer: sources, errors, windows/targets/segment ids, determinism, step indexing,
multi-host equivalence, resume (get/set_state, Orbax), TFDS builder, embedded corpus."""

import dataclasses
import json
import pathlib

import grain
import numpy as np
import pytest

from bltjax.data import DataConfig, embedded, pipeline, sources, tfds_builder
from bltjax.data.pipeline import BOS_ID, EOS_ID, PAD_ID, encode_document, make_iterator
from bltjax.data.sources import DataError

REPO = pathlib.Path(__file__).resolve().parent.parent

DOCS = [b"hello world", b"a", b"", "caf\u00e9 \u2603 ok".encode(), b"line one\nline two\n",
        b"x" * 37, b"The quick brown fox jumps over the lazy dog."]


def write_docs(tmp_path: pathlib.Path, docs=DOCS, name="docs.jsonl") -> pathlib.Path:
    """Docs as a JSON-lines file (empty documents allowed there)."""
    path = tmp_path / name
    path.write_text("".join(json.dumps({"text": d.decode()}) + "\n" for d in docs))
    return path


def jsonl_cfg(tmp_path, **kw) -> DataConfig:
    kw.setdefault("split_rule", "source")
    kw.setdefault("val_path", str(write_docs(tmp_path)))
    return DataConfig(source="jsonl", path=str(write_docs(tmp_path)), **kw)


def full_stream(docs=DOCS) -> np.ndarray:
    return np.concatenate([encode_document(d) for d in docs])


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ----------------------------------------------------------------------------- tokens & windows


def test_encode_document_and_slices():
    doc = bytes([0, 65, 255])
    np.testing.assert_array_equal(encode_document(doc), [BOS_ID, 4, 69, 259, EOS_ID])
    full = encode_document(doc)
    for lo in range(6):
        for hi in range(lo, 6):
            np.testing.assert_array_equal(pipeline.doc_token_slice(doc, lo, hi), full[lo:hi])
    np.testing.assert_array_equal(encode_document(b""), [BOS_ID, EOS_ID])


@pytest.mark.parametrize("seq_len", [1, 5, 16])
def test_windows_shift_bos_eos_and_padding(tmp_path, seq_len):
    cfg = jsonl_cfg(tmp_path)
    stream = full_stream()
    ds = pipeline.window_dataset(cfg, "train", seq_len)
    assert len(ds) == -(-(len(stream) - 1) // seq_len)
    xs, ys, masks = [], [], []
    for ex in ds:
        assert ex["tokens"].dtype == np.int32 and ex["tokens"].shape == (seq_len,)
        assert ex["targets"].dtype == np.int32 and ex["segment_ids"].dtype == np.int32
        assert ex["mask"].dtype == np.bool_
        np.testing.assert_array_equal(ex["tokens"][1:], ex["targets"][:-1])  # y is x shifted by one
        xs.append(ex["tokens"]), ys.append(ex["targets"]), masks.append(ex["mask"])
    x, y, m = np.concatenate(xs), np.concatenate(ys), np.concatenate(masks)
    n = len(stream) - 1
    np.testing.assert_array_equal(x[:n], stream[:-1])  # windows tile the stream with stride seq_len
    np.testing.assert_array_equal(y[m], stream[1:])  # every target once, in order
    assert m.sum() == n and not m[n:].any()
    assert (y[n:] == PAD_ID).all() and (x[n + 1:] == PAD_ID).all()
    # BOS opens and EOS closes each document, bytes are shifted by 4.
    assert (stream == BOS_ID).sum() == (stream == EOS_ID).sum() == len(DOCS)
    assert stream[0] == BOS_ID and stream[-1] == EOS_ID and stream[1] == ord("h") + 4


def test_segment_ids_eos_belongs_to_closing_document():
    x = np.array([BOS_ID, 10, EOS_ID, BOS_ID, 11, EOS_ID, EOS_ID, 12, PAD_ID, PAD_ID], np.int32)
    seg = pipeline.segment_ids_from_tokens(x, n_real=8)
    np.testing.assert_array_equal(seg, [0, 0, 0, 1, 1, 1, 2, 3, 4, 4])


def test_segment_ids_in_windows(tmp_path):
    cfg = jsonl_cfg(tmp_path)
    for ex in pipeline.window_dataset(cfg, "train", 12):
        x, seg, real = ex["tokens"], ex["segment_ids"], ex["mask"].sum() + 1
        assert seg[0] == 0 and (np.diff(seg) >= 0).all()
        for j in range(1, min(real, len(x))):  # id increments exactly after each EOS
            assert seg[j] == seg[j - 1] + (x[j - 1] == EOS_ID)
            if x[j] == BOS_ID:
                assert x[j - 1] == EOS_ID and seg[j] == seg[j - 1] + 1


# ----------------------------------------------------------------------------- iterators


def text_cfg(tmp_path, n_docs=30, **kw) -> DataConfig:
    rng = np.random.default_rng(0)
    d = tmp_path / "corpus"
    d.mkdir(exist_ok=True)
    for i in range(n_docs):
        words = rng.choice(["alpha", "beta", "gamma", "delta", "eps"], size=rng.integers(1, 12))
        (d / f"doc{i:03d}.txt").write_text(f"doc {i}: " + " ".join(words) + "\n")
    return DataConfig(source="text", path=str(d), read_threads=0, prefetch_batches=0, **kw)


def test_iterator_determinism_and_seed(tmp_path):
    cfg = text_cfg(tmp_path)
    kw = dict(seq_len=16, global_batch=4, split="train")
    a = take(make_iterator(cfg, seed=3, **kw), 5)
    assert_batches_equal(a, take(make_iterator(cfg, seed=3, **kw), 5))
    b = take(make_iterator(cfg, seed=4, **kw), 5)
    assert any((x["tokens"] != y["tokens"]).any() for x, y in zip(a, b))
    unshuffled = take(make_iterator(dataclasses.replace(cfg, shuffle=False), **kw), 1)[0]
    ref = pipeline.window_dataset(cfg, "train", 16)
    np.testing.assert_array_equal(unshuffled["tokens"], np.stack([ref[i]["tokens"] for i in range(4)]))


def test_epochs_cover_all_windows_and_reshuffle(tmp_path):
    (tmp_path / "count.txt").write_text(" ".join(str(i) for i in range(40)))  # no repeated windows
    cfg = DataConfig(source="text", path=str(tmp_path / "count.txt"), val_fraction=0.0)
    n = pipeline.num_windows(cfg, "train", 8)
    ref = {pipeline.window_dataset(cfg, "train", 8)[i]["tokens"].tobytes(): i for i in range(n)}
    ds = pipeline.make_dataset(cfg, seq_len=8, global_batch=1, split="train", seed=0)
    order = [ref[ds[k]["tokens"][0].tobytes()] for k in range(2 * n)]
    assert sorted(order[:n]) == list(range(n)) and sorted(order[n:]) == list(range(n))
    assert order[:n] != order[n:] and order[:n] != list(range(n))


def test_start_step_and_set_next_index(tmp_path):
    cfg = text_cfg(tmp_path)
    kw = dict(seq_len=16, global_batch=4, split="train", seed=1)
    ref = take(make_iterator(cfg, **kw), 7)
    for k in (1, 4, 6):
        assert_batches_equal(take(make_iterator(cfg, start_step=k, **kw), 7 - k), ref[k:])
    it = make_iterator(cfg, **kw)
    grain.experimental.set_next_index(it, 5)
    assert_batches_equal([next(it)], [ref[5]])


@pytest.mark.parametrize("process_count", [2, 4])
def test_same_global_batch_for_any_process_count(tmp_path, process_count):
    cfg = text_cfg(tmp_path, n_docs=8)  # few windows: steps cross epoch boundaries
    kw = dict(seq_len=16, global_batch=4, split="train", seed=7)
    single = take(make_iterator(cfg, process_index=0, process_count=1, **kw), 6)
    hosts = [take(make_iterator(cfg, process_index=p, process_count=process_count, start_step=0, **kw), 6)
             for p in range(process_count)]
    for k in range(6):
        for key in single[k]:
            glued = np.concatenate([hosts[p][k][key] for p in range(process_count)])
            np.testing.assert_array_equal(glued, single[k][key], err_msg=f"step {k} {key}")
        assert hosts[0][k]["tokens"].shape == (4 // process_count, 16)


@pytest.mark.parametrize("prefetch", [0, 3])
def test_get_state_set_state_resume(tmp_path, prefetch):
    cfg = dataclasses.replace(text_cfg(tmp_path), read_threads=prefetch, prefetch_batches=prefetch)
    kw = dict(seq_len=16, global_batch=2, split="train", seed=0)
    it = make_iterator(cfg, **kw)
    take(it, 3)
    state = it.get_state()
    rest = take(it, 4)
    fresh = make_iterator(cfg, **kw)
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 4), rest)


def test_orbax_checkpoint_of_iterator(tmp_path):
    import orbax.checkpoint as ocp

    cfg = text_cfg(tmp_path)
    kw = dict(seq_len=16, global_batch=2, split="train", seed=0)
    it = make_iterator(cfg, **kw)
    take(it, 3)
    mngr = ocp.CheckpointManager(tmp_path / "ckpt", options=ocp.CheckpointManagerOptions(max_to_keep=1))
    mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    rest = take(it, 3)
    fresh = make_iterator(cfg, **kw)
    mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    mngr.close()
    assert (tmp_path / "ckpt" / "3" / "data" / "process_0-of-1.json").is_file()
    assert json.loads((tmp_path / "ckpt" / "3" / "data" / "process_0-of-1.json").read_text())
    assert_batches_equal(take(fresh, 3), rest)


def test_validation_pass_is_padded_and_complete(tmp_path):
    cfg = jsonl_cfg(tmp_path)
    stream = full_stream()
    batches = list(make_iterator(cfg, seq_len=8, global_batch=4, split="validation"))
    n_windows = -(-(len(stream) - 1) // 8)
    assert len(batches) == -(-n_windows // 4)
    mask = np.concatenate([b["mask"].reshape(-1) for b in batches])
    targets = np.concatenate([b["targets"].reshape(-1) for b in batches])
    np.testing.assert_array_equal(targets[mask], stream[1:])
    # Two hosts: the same pass, each host half of every step.
    halves = [list(make_iterator(cfg, seq_len=8, global_batch=4, split="validation",
                                 process_index=p, process_count=2)) for p in range(2)]
    assert len(halves[0]) == len(halves[1]) == len(batches)
    np.testing.assert_array_equal(np.concatenate([halves[0][1]["targets"], halves[1][1]["targets"]]),
                                  batches[1]["targets"])


def test_two_worker_processes_match_in_process(tmp_path):
    """The one multiprocessing test: mp_prefetch with 2 workers gives the same batches and resumes."""
    cfg = text_cfg(tmp_path)
    kw = dict(seq_len=16, global_batch=4, split="train", seed=2)
    ref = take(make_iterator(cfg, **kw), 6)
    mp_cfg = dataclasses.replace(cfg, worker_count=2)
    it = make_iterator(mp_cfg, start_step=1, **kw)
    try:
        got = take(it, 3)
        state = it.get_state()
    finally:
        it.close()
    assert_batches_equal(got, ref[1:4])
    it2 = make_iterator(mp_cfg, **kw)
    try:
        it2.set_state(state)
        assert_batches_equal(take(it2, 2), ref[4:6])
    finally:
        it2.close()


def test_precomputed_entropies(tmp_path):
    cfg = jsonl_cfg(tmp_path, split_rule="stream", val_path="", val_fraction=0.3)
    n_full = pipeline.full_stream_length(cfg)
    assert n_full == len(full_stream())
    path = tmp_path / "ent.npy"
    np.save(path, np.arange(n_full, dtype=np.float16) / 64)
    ecfg = dataclasses.replace(cfg, entropies_path=str(path))
    full_ent = np.arange(n_full, dtype=np.float16).astype(np.float32) / 64
    _, train_index = pipeline.stream_index(ecfg, "train")
    for split, first_pos in (("train", 0), ("validation", int(train_index.num_tokens))):
        ex = pipeline.window_dataset(ecfg, split, 6)[0]
        assert ex["entropies"].dtype == np.float32
        np.testing.assert_allclose(ex["entropies"], full_ent[first_pos:first_pos + 6])
    np.save(path, np.zeros(n_full + 1, np.float32))
    with pytest.raises(DataError, match="one per token"):
        pipeline.window_dataset(ecfg, "train", 6)


# ----------------------------------------------------------------------------- splits


def test_stream_split_divides_the_straddling_document(tmp_path):
    docs = [b"aaaa", b"bbbbbb", b"cc"]  # 12 bytes, cut at int(12 * 0.75) = 9 -> inside doc 1
    (tmp_path / "d").mkdir()
    for i, d in enumerate(docs):
        (tmp_path / "d" / f"{i}.txt").write_bytes(d)
    cfg = DataConfig(source="text", path=str(tmp_path / "d"), val_fraction=0.25)
    assert pipeline.resolved_split_rule(cfg) == "stream"

    def stream(split):
        src, idx = pipeline.stream_index(cfg, split)
        return np.concatenate([pipeline.doc_token_slice(src[d], s, s + n)
                               for d, s, n in zip(idx.doc, idx.start, idx.length)])

    b = ord("b") + 4
    np.testing.assert_array_equal(stream("train"), list(encode_document(b"aaaa")) + [BOS_ID] + [b] * 5)
    np.testing.assert_array_equal(stream("validation"), [b, EOS_ID] + list(encode_document(b"cc")))
    parts = tfds_builder.split_documents(sources.text_files(str(tmp_path / "d")), 0.25)
    assert [t for _, t in parts["train"]] == [b"aaaa", b"bbbbb"]
    assert [t for _, t in parts["validation"]] == [b"b", b"cc"]


def test_document_split_is_by_content_hash(tmp_path):
    docs = [f"document number {i}\n".encode() for i in range(200)]
    cfg = DataConfig(source="jsonl", path=str(write_docs(tmp_path, docs)), split_rule="document")
    src, tr = pipeline.stream_index(cfg, "train")
    _, va = pipeline.stream_index(cfg, "validation")
    assert set(tr.doc.tolist()).isdisjoint(va.doc.tolist()) and len(tr.doc) + len(va.doc) == 200
    assert 5 <= len(va.doc) <= 40
    assert all(pipeline.document_fraction(src[d]) < 0.1 for d in va.doc)


def test_tiny_shakespeare_splits_90_10(data_cache):
    """The experiments' ``fetch:tinyshakespeare`` path, served from the cache ($BLTJAX_DATA_DIR)."""
    cfg = DataConfig(source="text", path="fetch:tinyshakespeare")
    raw = (data_cache / "tinyshakespeare" / "input.txt").read_bytes()
    src, tr = pipeline.stream_index(cfg, "train")
    _, va = pipeline.stream_index(cfg, "validation")
    assert len(src) == 1 and len(raw) == 1_115_394
    assert tr.num_tokens == 1 + 1_003_854 and va.num_tokens == 111_540 + 1  # nanoGPT's byte split
    fn = pipeline.window_fn(cfg, "validation", 64)
    ex = fn(0)
    np.testing.assert_array_equal(ex["tokens"], np.frombuffer(raw[1_003_854:1_003_918], np.uint8) + 4)
    last = fn(fn.num_windows - 1)
    assert last["targets"][last["mask"]][-1] == EOS_ID
    assert pipeline.window_fn(cfg, "train", 64)(0)["tokens"][0] == BOS_ID


# ----------------------------------------------------------------------------- sources


def test_text_sources_files_dirs_globs_paragraphs(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("first file\n\n\nsecond paragraph\nstill second\n")
    (tmp_path / "sub" / "b.md").write_text("b file")
    (tmp_path / ".hidden").write_text("skip me")
    assert len(sources.text_files(str(tmp_path / "a.txt"))) == 1
    d = sources.text_files(str(tmp_path))
    assert d.docs == ((tmp_path / "a.txt").read_bytes(), b"b file")
    g = sources.text_files(str(tmp_path / "**" / "*.md"))
    assert g.docs == (b"b file",)
    p = sources.text_files(f"{tmp_path / 'a.txt'},{tmp_path / 'sub'}", split="blank_lines")
    assert p.docs == (b"first file", b"second paragraph\nstill second", b"b file")


def test_jsonl_source_field(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"body": "one", "id": 1}\n\n{"body": "t\\u00e9o"}\n')
    src = sources.jsonl_files(str(path), text_field="body")
    assert src.docs == (b"one", "t\u00e9o".encode())
    cfg = DataConfig(source="jsonl", path=str(path), jsonl_field="body", val_fraction=0.0)
    assert len(pipeline.window_dataset(cfg, "train", 4)) == 3  # 11 tokens -> 10 targets


def test_array_record_source(tmp_path):
    from array_record.python.array_record_module import ArrayRecordWriter

    paths = [tmp_path / f"shard-{i}.array_record" for i in range(2)]
    for i, path in enumerate(paths):
        w = ArrayRecordWriter(str(path), "group_size:1")
        for d in DOCS[i::2]:
            w.write(d)
        w.close()
    src = sources.ArrayRecordSource(str(tmp_path / "shard-*.array_record"))
    assert sorted(src[i] for i in range(len(src))) == sorted(DOCS)
    assert src.locate(len(src) - 1) == (str(paths[1]), len(DOCS[1::2]) - 1)
    cfg = DataConfig(source="array_record", path=str(tmp_path / "shard-*.array_record"), val_fraction=0.0)
    assert len(list(pipeline.window_dataset(cfg, "train", 8))) > 0

    bad = tmp_path / "bad.array_record"
    w = ArrayRecordWriter(str(bad), "group_size:1")
    w.write(b"ok")
    w.write(b"bad \xff byte")
    w.close()
    with pytest.raises(DataError, match=r"bad.array_record record 1: invalid UTF-8 at byte offset 4"):
        pipeline.stream_index(DataConfig(source="array_record", path=str(bad), allow_invalid_utf8=False), "train")
    ok = DataConfig(source="array_record", path=str(bad), val_fraction=0.0)  # raw bytes by default
    assert pipeline.stream_index(ok, "train")[1].num_tokens == 2 + 2 + 10 + 2


def test_tfds_builder_and_data_source(tmp_path):
    import tensorflow_datasets as tfds

    (tmp_path / "in").mkdir()
    for i in range(5):
        (tmp_path / "in" / f"{i}.txt").write_text(f"document {i} " + "words " * (i + 1))
    out = str(tmp_path / "tfds")
    assert tfds_builder.main(["--input", str(tmp_path / "in" / "*.txt"), "--out", out,
                              "--name", "tiny_text", "--val-fraction", "0.2"]) == 0
    assert sorted(p.name for p in pathlib.Path(out).iterdir()) == ["tiny_text"]
    train = tfds.data_source("tiny_text", split="train", data_dir=out)
    val = tfds.data_source("tiny_text", split="validation", data_dir=out)
    texts = b"".join(sorted(train[i]["text"] for i in range(len(train))))
    assert isinstance(train[0]["text"], bytes) and len(val) >= 1
    total = sum(len((tmp_path / "in" / f"{i}.txt").read_bytes()) for i in range(5))
    assert len(texts) == int(total * 0.8)
    cfg = DataConfig(source="tfds", tfds_name="tiny_text", tfds_data_dir=out, shuffle=False)
    assert pipeline.resolved_split_rule(cfg) == "source"
    src = pipeline.open_source(cfg, "validation")
    assert len(src) == len(val) and isinstance(src[0], bytes)
    b = next(make_iterator(cfg, seq_len=8, global_batch=2, split="train"))
    assert b["tokens"].shape == (2, 8) and b["tokens"][0, 0] == BOS_ID
    with pytest.raises(DataError, match="no text feature 'body'"):
        sources.TfdsSource("tiny_text", split="train", data_dir=out, field="body")
    with pytest.raises(DataError, match="cannot open"):
        sources.TfdsSource("no_such_dataset", split="train", data_dir=out)
    assert tfds_builder.main(["--input", str(tmp_path / "nothing*.txt"), "--out", out]) == 2


# ----------------------------------------------------------------------------- bad input


def test_bad_input_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        sources.text_files(str(tmp_path / "missing.txt"))
    with pytest.raises(DataError, match="matches no files"):
        sources.text_files(str(tmp_path / "*.nothing"))
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(DataError, match="contains no files"):
        sources.text_files(str(tmp_path / "emptydir"))
    (tmp_path / "empty.txt").write_bytes(b"  \n")
    with pytest.raises(DataError, match="empty.txt: file is empty"):
        sources.text_files(str(tmp_path / "empty.txt"))
    (tmp_path / "nul.bin").write_bytes(b"abc\x00def")
    with pytest.raises(DataError, match="binary"):
        sources.text_files(str(tmp_path / "nul.bin"))
    (tmp_path / "ctl.bin").write_bytes(bytes(range(1, 32)) * 10 + b"text")
    with pytest.raises(DataError, match="binary"):
        sources.text_files(str(tmp_path / "ctl.bin"))
    (tmp_path / "latin1.txt").write_bytes("ok caf\u00e9".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt: invalid UTF-8 at byte offset 6"):
        sources.text_files(str(tmp_path / "latin1.txt"))
    assert sources.text_files(str(tmp_path / "latin1.txt"), allow_invalid_utf8=True).docs == (b"ok caf\xe9",)
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "a"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match="bad.jsonl: invalid UTF-8 at byte offset 27"):
        sources.jsonl_files(str(tmp_path / "bad.jsonl"))
    raw = sources.jsonl_files(str(tmp_path / "bad.jsonl"), allow_invalid_utf8=True)
    assert raw.docs == (b"a", b"caf\xe9")  # raw bytes round-trip through JSON
    (tmp_path / "nofield.jsonl").write_text('{"content": "a"}\n')
    with pytest.raises(DataError, match=r"nofield.jsonl:1: no text field 'text'"):
        sources.jsonl_files(str(tmp_path / "nofield.jsonl"))
    (tmp_path / "broken.jsonl").write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(DataError, match=r"broken.jsonl:2: invalid JSON"):
        sources.jsonl_files(str(tmp_path / "broken.jsonl"))
    from array_record.python.array_record_module import ArrayRecordWriter

    ArrayRecordWriter(str(tmp_path / "none.array_record"), "group_size:1").close()
    with pytest.raises(DataError, match="ArrayRecord corpus is empty"):
        sources.ArrayRecordSource(str(tmp_path / "none.array_record"))
    with pytest.raises(DataError, match="not readable as ArrayRecord"):
        sources.ArrayRecordSource(str(tmp_path / "latin1.txt"))
    # Each message is a single line.
    try:
        sources.text_files(str(tmp_path / "latin1.txt"))
    except DataError as e:
        assert "\n" not in str(e)


def test_config_and_pipeline_argument_errors(tmp_path):
    for bad in (dict(source="csv"), dict(split_rule="random"), dict(val_fraction=1.0),
                dict(source="text"), dict(source="tfds"), dict(source="text", path="x", split_rule="source"),
                dict(seed=-1), dict(worker_count=-1)):
        with pytest.raises(DataError):
            DataConfig(**bad).validate()
    cfg = jsonl_cfg(tmp_path)
    with pytest.raises(DataError, match="multiple of process_count"):
        make_iterator(cfg, seq_len=8, global_batch=3, process_count=2, process_index=0)
    with pytest.raises(DataError, match="split must be"):
        make_iterator(cfg, seq_len=8, global_batch=2, split="test")
    with pytest.raises(DataError, match="is empty"):
        pipeline.stream_index(dataclasses.replace(cfg, split_rule="stream", val_fraction=0.0), "validation")


# ----------------------------------------------------------------------------- embedded corpus


def test_embedded_corpus_loads_and_splits():
    corpus = embedded.embedded_corpus()
    assert len(corpus) >= 50
    total = sum(len(d) for d in corpus.docs)
    assert 1_000_000 <= total <= embedded.DEFAULT_MAX_BYTES + embedded.DEFAULT_MAX_FILE_BYTES
    assert b"def " in b"".join(corpus.docs) and list(corpus.names) == sorted(corpus.names)
    assert not any("/test/" in n or "/tests/" in n for n in corpus.names)
    cfg = DataConfig()
    assert pipeline.resolved_split_rule(cfg) == "document"
    _, tr = pipeline.stream_index(cfg, "train")
    _, va = pipeline.stream_index(cfg, "validation")
    assert set(tr.doc.tolist()).isdisjoint(va.doc.tolist())
    assert 0.02 < va.num_tokens / (tr.num_tokens + va.num_tokens) < 0.3
    b = next(make_iterator(cfg, seq_len=32, global_batch=2, split="train"))
    assert b["tokens"].shape == (2, 32) and b["mask"].all()


def test_generated_fallback_corpus(monkeypatch):
    monkeypatch.setattr(embedded, "stdlib_dir", lambda: None)
    embedded.stdlib_documents.cache_clear()
    try:
        corpus = embedded.embedded_corpus(max_bytes=123_456)
        assert corpus.names[0].startswith("generated:") and len(corpus) == 600
        assert corpus.docs == embedded.generated_documents().docs
        assert b" = " in corpus.docs[0]
    finally:
        embedded.stdlib_documents.cache_clear()
