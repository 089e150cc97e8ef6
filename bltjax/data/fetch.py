"""Named small corpora, downloaded on first use into a cache directory and checked by SHA-256.

    python -m bltjax.data.fetch tinyshakespeare          # download (once) and print the local path
    python -m bltjax.data.fetch --list                   # known corpora, their URLs and cache paths

Anywhere a data path is accepted (``--set data.path=...``, ``python -m bltjax.eval --data ...``, the
entropy tools' ``--data``), ``fetch:NAME`` stands for the cached file of corpus ``NAME``, downloaded
first if it is missing.  The experiments that train on tiny Shakespeare use ``fetch:tinyshakespeare``.

Cache directory: ``$BLTJAX_DATA_DIR`` if set, else ``~/.cache/bltjax/data``.  Corpus ``NAME`` lives at
``<cache>/NAME/<file name>`` (tiny Shakespeare: ``<cache>/tinyshakespeare/input.txt``), so a directory
prepared by hand (or an offline copy) is used as is: a file already there is only checked against its
SHA-256.  Downloads stream into a temporary file next to the target and are renamed into place only
after the checksum matched, so an interrupted or corrupt download never leaves a file that looks
complete.  Offline, the error names the file to place and where.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import pathlib
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Optional

ENV_DATA_DIR = "BLTJAX_DATA_DIR"
DEFAULT_DATA_DIR = pathlib.Path("~/.cache/bltjax/data")
PREFIX = "fetch:"
_CHUNK = 1 << 16


class FetchError(ValueError):
    """A corpus could not be downloaded or does not match its checksum (one-line message; the data
    layer re-raises it as its ``DataError``)."""


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A small corpus: one file at ``url`` whose content has SHA-256 ``sha256``."""

    name: str
    url: str
    sha256: str
    filename: str
    size: Optional[int] = None  # bytes (for messages; the checksum is what is enforced)
    description: str = ""
    tfds_name: str = ""  # the same text in the TFDS catalog, if any (see docs/data.md)


CORPORA: dict[str, Corpus] = {
    c.name: c for c in (
        Corpus(
            name="tinyshakespeare",
            url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            filename="input.txt", size=1_115_394,
            description="Tiny Shakespeare (karpathy/char-rnn): 1.1 MB of ASCII plays; nanoGPT splits it 90/10",
            tfds_name="tiny_shakespeare"),
    )
}


def data_dir() -> pathlib.Path:
    """The cache directory: ``$BLTJAX_DATA_DIR``, else ``~/.cache/bltjax/data``."""
    return pathlib.Path(os.environ.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR).expanduser()


def corpus(name: str) -> Corpus:
    if name not in CORPORA:
        raise FetchError(f"unknown corpus {name!r}; known: {', '.join(sorted(CORPORA))}")
    return CORPORA[name]


def local_path(name: str, root: Optional[os.PathLike | str] = None) -> pathlib.Path:
    """Where corpus ``name`` is (or will be) cached: ``<root or data_dir()>/<name>/<file name>``."""
    c = corpus(name)
    return pathlib.Path(root).expanduser() / c.name / c.filename if root else data_dir() / c.name / c.filename


def sha256_file(path: os.PathLike | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _offline_hint(c: Corpus, dest: pathlib.Path) -> str:
    return (f"place {c.url.rsplit('/', 1)[-1]} ({c.url}, sha256 {c.sha256[:16]}...) at {dest} "
            f"(or set {ENV_DATA_DIR} to a directory holding {c.name}/{c.filename})")


def download(url: str, dest: os.PathLike | str, sha256: str, *, progress: bool = True, timeout: float = 60.0,
             opener: Callable = urllib.request.urlopen) -> pathlib.Path:
    """Stream ``url`` into ``dest`` atomically, checking its SHA-256; return ``dest``.

    The bytes go to a temporary file in ``dest``'s directory, renamed onto ``dest`` only when the
    checksum matches; on any failure the temporary file is removed and ``dest`` is left untouched.
    Raises ``FetchError`` (network error or checksum mismatch).
    """
    dest = pathlib.Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = pathlib.Path(tmp_name)
    try:
        h, n, total = hashlib.sha256(), 0, None
        with os.fdopen(fd, "wb") as out:
            try:
                with opener(url, timeout=timeout) as resp:
                    total = resp.headers.get("Content-Length") if getattr(resp, "headers", None) else None
                    from tqdm.auto import tqdm

                    with tqdm(total=int(total) if total else None, unit="B", unit_scale=True, file=sys.stderr,
                              desc=f"fetch {dest.name}", disable=not progress, leave=False) as bar:
                        for block in iter(lambda: resp.read(_CHUNK), b""):
                            out.write(block)
                            h.update(block)
                            n += len(block)
                            bar.update(len(block))
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", None) or e
                raise FetchError(f"cannot download {url}: {reason}") from None
        if total and n != int(total):
            raise FetchError(f"download of {url} ended after {n} of {total} bytes; nothing was written to {dest}")
        got = h.hexdigest()
        if got != sha256:
            raise FetchError(f"checksum mismatch for {url}: sha256 {got}, expected {sha256}; nothing was written "
                             f"to {dest}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def fetch(name: str, *, root: Optional[os.PathLike | str] = None, progress: bool = True,
          timeout: float = 60.0) -> pathlib.Path:
    """Local path of corpus ``name``: the cached file (checked against its SHA-256), downloaded first when
    missing.  Raises ``FetchError`` with a one-line message (offline: which file to place where)."""
    c = corpus(name)
    dest = local_path(name, root)
    if dest.is_file():
        got = sha256_file(dest)
        if got != c.sha256:
            raise FetchError(f"{dest} does not match corpus {name!r} (sha256 {got}, expected {c.sha256}); "
                             f"delete it to download again, or {_offline_hint(c, dest)}")
        return dest
    try:
        return download(c.url, dest, c.sha256, progress=progress, timeout=timeout)
    except FetchError as e:
        raise FetchError(f"{e}; offline? {_offline_hint(c, dest)}") from None


def resolve(part: str) -> str:
    """``fetch:NAME`` -> the local path of corpus NAME (fetched if needed); anything else unchanged."""
    if part.startswith(PREFIX):
        return str(fetch(part[len(PREFIX):].strip()))
    return part


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bltjax.data.fetch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME", help=f"corpora to fetch ({', '.join(sorted(CORPORA))})")
    p.add_argument("--dir", default=None, help=f"cache directory (default ${ENV_DATA_DIR} or {DEFAULT_DATA_DIR})")
    p.add_argument("--list", action="store_true", help="list the known corpora and where they are cached")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list or not args.names:
        for c in CORPORA.values():
            path = local_path(c.name, args.dir)
            state = "cached" if path.is_file() else "not fetched"
            print(f"{c.name}: {c.description}\n  {c.url}\n  -> {path} ({state})")
        return 0
    try:
        for name in args.names:
            print(fetch(name, root=args.dir, progress=not args.no_progress))
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from bltjax.cli import run_cli

    sys.exit(run_cli(main))


__all__ = ["Corpus", "CORPORA", "FetchError", "ENV_DATA_DIR", "PREFIX", "data_dir", "corpus", "local_path",
           "sha256_file", "download", "fetch", "resolve", "main"]
