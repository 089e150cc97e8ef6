"""Local and remote (``gs://``, any fsspec scheme) paths, behind one small API.

Every path bltjax reads or writes that a user may point at Cloud Storage (the training workdir, data
files, checkpoints, pretrained directories) goes through :func:`as_path`, which returns an
``etils.epath.Path`` (gcsfs-backed for ``gs://``; no TensorFlow needed).  What GCS cannot do like a
local disk is handled here:

* appending to an object: :class:`LocalMirror` keeps a local copy of a remote directory's files that
  are being appended to (metrics.jsonl, TensorBoard event files) and uploads the changed ones on
  ``sync()``;
* native readers that only open local files (ArrayRecord's C++ reader, ``np.load`` of memory maps):
  :func:`stage_local` copies one remote file into a local cache once (``$BLTJAX_CACHE_DIR``, default
  ``~/.cache/bltjax``) and logs it;
* atomic rename: :func:`write_text_atomic` uses temp-file + rename locally and a single object write
  (atomic on GCS) remotely; :func:`move_tree` renames a directory by server-side copies;
* directories: there are none to create, so :func:`bucket_error` checks the bucket before a run starts.

Credentials are the usual Google ones (gcsfs and tensorstore both use Application Default Credentials:
the TPU/GCE metadata server, ``gcloud auth application-default login``, or
``GOOGLE_APPLICATION_CREDENTIALS``).  ``STORAGE_EMULATOR_HOST`` / ``TENSORSTORE_GCS_HTTP_URL`` point
them at an emulator instead (see ``docs/cloud_storage.md``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pathlib
import shutil
import tempfile
from typing import Any, Optional

from etils import epath

log = logging.getLogger(__name__)

ENV_CACHE_DIR = "BLTJAX_CACHE_DIR"


def _no_listing_cache() -> None:
    """gcsfs caches directory listings for the life of the process and only invalidates them on its own
    writes; other hosts (and other processes) write the same workdir, so a cached listing would hide their
    checkpoints.  Turn the cache off for GCS filesystems created from now on (unless configured)."""
    try:
        import fsspec.config
    except ImportError:  # pragma: no cover - fsspec comes with gcsfs
        return
    for proto in ("gs", "gcs"):
        fsspec.config.conf.setdefault(proto, {}).setdefault("use_listings_cache", False)


_no_listing_cache()


def is_remote(path: Any) -> bool:
    """True for ``scheme://...`` paths other than ``file://`` (``gs://``, ``s3://``, ...)."""
    s = os.fspath(path) if not isinstance(path, str) else path
    return "://" in s and not s.startswith("file://")


def as_path(path: Any) -> epath.Path:
    """``epath.Path`` for a local or remote path; local ones get ``~`` expanded and are made absolute."""
    if isinstance(path, epath.Path) and is_remote(path):
        return path
    s = os.fspath(path)
    if s.startswith("file://"):
        s = s[len("file://"):]
    if is_remote(s):
        return epath.Path(s)
    return epath.Path(os.path.abspath(os.path.expanduser(s)))


def bucket_error(path: Any) -> Optional[str]:
    """None when the bucket of a remote ``path`` can be reached (or ``path`` is local), else a one-line
    reason.  Checked before a run writes anything: creating directories on GCS would otherwise try to
    create a misspelt bucket."""
    if not is_remote(path):
        return None
    s = display(path)
    scheme, rest = s.split("://", 1)
    bucket = rest.split("/", 1)[0]
    try:
        if as_path(f"{scheme}://{bucket}").exists():
            return None
        return f"bucket {scheme}://{bucket} does not exist or is not visible with the current credentials"
    except Exception as e:  # noqa: BLE001 -- auth / network errors of any client library
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"cannot reach bucket {scheme}://{bucket} ({type(e).__name__}: {first[:300]})"


def display(path: Any) -> str:
    """The path as a user typed it (``gs://b/x``, not epath's internal form)."""
    return os.fspath(path)


def write_text_atomic(path: Any, text: str) -> None:
    """Write ``text`` so that readers see the old or the new content, never a partial file."""
    path = as_path(path)
    if is_remote(path):
        path.write_text(text)  # one object upload: atomic on GCS
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def files_under(directory: Any) -> list[epath.Path]:
    """Every file below ``directory`` (recursive), sorted; works for remote directories, where
    ``epath.Path.rglob`` is not available."""
    root = as_path(directory)
    if not is_remote(root):
        return sorted(p for p in root.rglob("*") if p.is_file())
    scheme = os.fspath(root).split("://", 1)[0]
    out = []
    for r, _, files in root.walk():
        r = os.fspath(r)
        if "://" not in r:  # fsspec's walk drops the scheme
            r = f"{scheme}://{r.lstrip('/')}"
        out.extend(epath.Path(r) / f for f in files)
    return sorted(out, key=str)


def move_tree(src: Any, dst: Any) -> None:
    """Rename a directory.  Remote: server-side copy of every object, then delete (GCS has no
    directories; gcsfs's own ``mv`` first tries the ``moveTo`` API, which not every GCS server has)."""
    src, dst = as_path(src), as_path(dst)
    if not is_remote(src):
        src.rename(dst)
        return
    from etils.epath import backend

    fs = backend.fsspec_backend.fs(os.fspath(src))  # epath's own instance: its listing cache stays right
    fs.copy(os.fspath(src), os.fspath(dst), recursive=True)
    fs.rm(os.fspath(src), recursive=True)


def cache_dir() -> pathlib.Path:
    """Local cache root for staged remote files: ``$BLTJAX_CACHE_DIR`` or ``~/.cache/bltjax``."""
    return pathlib.Path(os.environ.get(ENV_CACHE_DIR) or pathlib.Path.home() / ".cache" / "bltjax").expanduser()


def _download(src: epath.Path, dst: pathlib.Path, what: str) -> pathlib.Path:
    """Copy remote ``src`` to ``dst`` unless a copy of the same size is there (temp file + rename, so
    concurrent stagers and interrupted downloads never leave a partial file)."""
    url = display(src)
    size = src.stat().length
    if dst.is_file() and dst.stat().st_size == size:
        log.info("using the local copy of %s at %s", url, dst)
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    log.warning("staging %s %s (%.1f MB) to the local cache %s (set %s to move the cache)",
                what, url, size / 1e6, dst, ENV_CACHE_DIR)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.")
    try:
        with os.fdopen(fd, "wb") as out, src.open("rb") as f:
            shutil.copyfileobj(f, out, length=16 << 20)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return dst


def _cache_slot(url: str, root: Optional[os.PathLike]) -> pathlib.Path:
    base = pathlib.Path(root) if root is not None else cache_dir() / "remote"
    return base / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


def stage_local(path: Any, *, root: Optional[os.PathLike] = None, what: str = "file") -> pathlib.Path:
    """A local copy of ``path``: the path itself when it is local, else a cached download.

    The cache key is the remote URL (under ``root``, default ``cache_dir()/remote``); a cached copy is
    reused when its size still matches the remote object's (a changed object of the same size is not
    detected: do not rewrite shards in place).
    """
    if not is_remote(path):
        return pathlib.Path(os.fspath(as_path(path)))
    src = as_path(path)
    return _download(src, _cache_slot(display(path), root) / src.name, what)


def stage_dir(path: Any, *, root: Optional[os.PathLike] = None, what: str = "directory") -> pathlib.Path:
    """A local copy of a directory tree (every file below it, cached like :func:`stage_local`);
    local paths are returned unchanged."""
    if not is_remote(path):
        return pathlib.Path(os.fspath(as_path(path)))
    src = as_path(path)
    url = display(path).rstrip("/")
    dst_root = _cache_slot(url, root) / src.name
    files = files_under(src)
    if not files:
        raise FileNotFoundError(f"{url}: no files to stage")
    for f in files:
        _download(f, dst_root / os.fspath(f)[len(url) + 1:], f"{what} file")
    return dst_root


class LocalMirror:
    """A local directory whose files are uploaded to a remote directory on :meth:`sync`.

    For files that grow by appending (GCS objects cannot be appended to): write them under
    :attr:`local`, call ``sync()`` to upload every file whose size or mtime changed since the last
    sync (whole-file uploads).  ``download`` fetches existing remote files first, so that a resumed
    run keeps appending to the same content.  For a local ``remote`` there is no mirror:
    :attr:`local` is ``remote`` itself and ``sync`` does nothing.
    """

    def __init__(self, remote: Any, *, download: tuple[str, ...] = ()):
        self.remote = as_path(remote)
        self.mirrored = is_remote(self.remote)
        self._seen: dict[str, tuple[int, int]] = {}
        if not self.mirrored:
            self.local = pathlib.Path(os.fspath(self.remote))
            self.local.mkdir(parents=True, exist_ok=True)
            self._tmp = None
            return
        self._tmp = tempfile.mkdtemp(prefix="bltjax-mirror-")
        self.local = pathlib.Path(self._tmp)
        for rel in download:
            src = self.remote / rel
            if src.exists():
                dst = self.local / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(src.read_bytes())
                self._seen[rel] = self._signature(dst)

    @staticmethod
    def _signature(p: pathlib.Path) -> tuple[int, int]:
        st = p.stat()
        return st.st_size, st.st_mtime_ns

    def sync(self) -> list[str]:
        """Upload changed files; returns their relative paths (empty for a local directory)."""
        if not self.mirrored:
            return []
        uploaded = []
        for p in sorted(self.local.rglob("*")):
            if not p.is_file():
                continue
            rel = p.relative_to(self.local).as_posix()
            sig = self._signature(p)
            if self._seen.get(rel) == sig:
                continue
            dst = self.remote / rel
            with p.open("rb") as f:  # snapshot: the writer may append while we upload
                data = f.read()
            dst.write_bytes(data)
            self._seen[rel] = sig
            uploaded.append(rel)
        return uploaded

    def close(self) -> None:
        """Final sync, then delete the local copy."""
        try:
            self.sync()
        finally:
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None


__all__ = ["ENV_CACHE_DIR", "is_remote", "as_path", "bucket_error", "display", "write_text_atomic", "files_under",
           "move_tree", "cache_dir", "stage_local", "stage_dir", "LocalMirror"]
