"""bltjax.data.fetch: named corpora downloaded into a cache, against a local HTTP server on loopback."""

import hashlib
import http.server
import importlib.util
import pathlib
import socket
import threading

import pytest

from bltjax.data import DataConfig, fetch, pipeline, sources
from bltjax.data.fetch import Corpus, FetchError

REPO = pathlib.Path(__file__).resolve().parent.parent
PAYLOAD = b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 200


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = {"/corpus.txt": PAYLOAD, "/truncated.txt": PAYLOAD[:1000]}.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))  # the truncated file promises more
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return port  # nothing listens there any more: connection refused


@pytest.fixture
def corpus_at(monkeypatch, tmp_path):
    """Register a corpus named 'tiny' served from ``url`` with checksum ``sha``; cache in tmp_path."""
    monkeypatch.setenv(fetch.ENV_DATA_DIR, str(tmp_path / "cache"))

    def register(url: str, sha: str) -> pathlib.Path:
        monkeypatch.setitem(fetch.CORPORA, "tiny", Corpus(name="tiny", url=url, sha256=sha, filename="corpus.txt"))
        return tmp_path / "cache" / "tiny" / "corpus.txt"

    return register


def _files(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_fetch_downloads_once_into_the_cache(server, corpus_at, monkeypatch):
    dest = corpus_at(f"{server}/corpus.txt", hashlib.sha256(PAYLOAD).hexdigest())
    got = fetch.fetch("tiny", progress=False)
    assert got == dest and dest.read_bytes() == PAYLOAD
    assert _files(dest.parent.parent) == [dest]  # no temporary file left
    # second call: served from the cache without touching the network
    monkeypatch.setitem(fetch.CORPORA, "tiny", Corpus(name="tiny", url="http://127.0.0.1:1/nothing",
                                                      sha256=fetch.CORPORA["tiny"].sha256, filename="corpus.txt"))
    assert fetch.fetch("tiny", progress=False) == dest
    # the data layer resolves fetch:NAME anywhere a path is accepted
    assert sources.expand_paths("fetch:tiny") == [dest]
    _, index = pipeline.stream_index(DataConfig(source="text", path="fetch:tiny", val_fraction=0.5), "train")
    assert index.num_tokens == 1 + len(PAYLOAD) // 2


def test_checksum_mismatch_leaves_nothing(server, corpus_at):
    dest = corpus_at(f"{server}/corpus.txt", "0" * 64)
    with pytest.raises(FetchError, match="checksum mismatch") as e:
        fetch.fetch("tiny", progress=False)
    assert "\n" not in str(e.value) and str(dest) in str(e.value)
    assert _files(dest.parent) == []


def test_truncated_download_leaves_nothing(server, corpus_at):
    """The server promises more bytes than it sends: an error, and no partial file."""
    dest = corpus_at(f"{server}/truncated.txt", hashlib.sha256(PAYLOAD).hexdigest())
    with pytest.raises(FetchError, match=f"ended after 1000 of {len(PAYLOAD)} bytes"):
        fetch.fetch("tiny", progress=False)
    assert _files(dest.parent) == []


def test_offline_error_says_which_file_to_place_where(corpus_at, closed_port):
    url = f"http://127.0.0.1:{closed_port}/corpus.txt"
    dest = corpus_at(url, hashlib.sha256(PAYLOAD).hexdigest())
    with pytest.raises(FetchError) as e:
        fetch.fetch("tiny", progress=False, timeout=5)
    msg = str(e.value)
    assert "\n" not in msg and "cannot download" in msg and f"at {dest}" in msg and url in msg
    assert _files(dest.parent) == []
    # a copy placed there by hand is then used as is
    dest.write_bytes(PAYLOAD)
    assert fetch.fetch("tiny", progress=False) == dest


def test_a_wrong_file_in_the_cache_is_refused(corpus_at):
    dest = corpus_at("http://127.0.0.1:1/unused", hashlib.sha256(PAYLOAD).hexdigest())
    dest.parent.mkdir(parents=True)
    dest.write_bytes(PAYLOAD[:-1])
    with pytest.raises(FetchError, match="does not match corpus 'tiny'"):
        fetch.fetch("tiny", progress=False)


def test_unknown_corpus_and_cli(corpus_at, server, capsys, tmp_path):
    with pytest.raises(FetchError, match="unknown corpus 'nope'.*tinyshakespeare"):
        fetch.fetch("nope")
    dest = corpus_at(f"{server}/corpus.txt", hashlib.sha256(PAYLOAD).hexdigest())
    assert fetch.main(["tiny", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(dest)
    assert fetch.main(["nope"]) == 2
    assert "error: unknown corpus" in capsys.readouterr().err


def test_tinyshakespeare_checksum_matches_the_corpus(data_cache, capsys):
    """The registered SHA-256 is that of the real file (the copy next to the repository), and
    ``python -m bltjax.data.fetch tinyshakespeare`` finds it in $BLTJAX_DATA_DIR."""
    path = fetch.fetch("tinyshakespeare", progress=False)
    assert path == data_cache / "tinyshakespeare" / "input.txt"
    assert fetch.sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert fetch.main(["tinyshakespeare"]) == 0
    assert capsys.readouterr().out.strip() == str(path)


@pytest.mark.parametrize("name", ["tiny_shakespeare", "entropy_tiny_shakespeare"])
def test_experiments_use_the_cache(name, data_cache):
    """The tiny-Shakespeare experiments read the fetched corpus, not a folder beside the repository."""
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    assert cfg.data.path == "fetch:tinyshakespeare"
    _, va = pipeline.stream_index(cfg.data, "validation")
    assert va.num_tokens == 111_540 + 1  # the last 10 % of the 1,115,394 bytes, + EOS
