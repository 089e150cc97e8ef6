"""The embedded default corpus: Python standard-library sources, present wherever Python is.

Why: smoke runs, tests and first-time users need *some* real text without a download.  Every
Python installation ships its standard library as ``.py`` files (code, comments and docstrings,
mostly English), so that is the corpus.

Selection rule (deterministic for a given Python build):

* every ``*.py`` file under ``sysconfig.get_paths()["stdlib"]``, skipping ``site-packages``,
  test directories (``test``, ``tests``, ``idle_test``...), hidden directories, files larger than
  ``max_file_bytes``, files that are not valid UTF-8 and empty files;
* candidates are ranked by a hash of their relative path (a fixed pseudo-random order, so the
  size cap samples the whole library instead of only ``a*`` modules) and taken until
  ``max_bytes`` is reached;
* the kept documents are returned in sorted relative-path order.

The train/validation split of this corpus is by document content hash (see
``bltjax.data.pipeline``, rule ``"document"``).  If the stdlib directory is missing (frozen or
embedded interpreters), a small generated corpus is used instead (``generated_documents``).
"""

import functools
import hashlib
import pathlib
import random
import sysconfig

from bltjax.data.sources import InMemorySource

DEFAULT_MAX_BYTES = 4_000_000
DEFAULT_MAX_FILE_BYTES = 200_000
_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})


def stdlib_dir() -> pathlib.Path | None:
    """The standard-library directory of this interpreter, or None when it has no sources."""
    path = sysconfig.get_paths().get("stdlib")
    if not path or not pathlib.Path(path, "os.py").is_file():
        return None
    return pathlib.Path(path)


def _path_rank(rel: str) -> bytes:
    return hashlib.blake2b(rel.encode("utf-8"), digest_size=8).digest()


def _candidate_files(root: pathlib.Path, max_file_bytes: int) -> list[tuple[str, pathlib.Path]]:
    """(relative posix path, path) of every eligible ``.py`` file, in sorted path order."""
    out = []
    for path in root.rglob("*.py"):
        rel_parts = path.relative_to(root).parts
        if any(p in _SKIP_DIRS or p.startswith(".") or p.startswith("test_") for p in rel_parts):
            continue
        try:
            size = path.stat().st_size
        except OSError:
            continue
        if 0 < size <= max_file_bytes:
            out.append(("/".join(rel_parts), path))
    return sorted(out)


@functools.lru_cache(maxsize=4)
def stdlib_documents(max_bytes: int = DEFAULT_MAX_BYTES,
                     max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> InMemorySource | None:
    """Standard-library ``.py`` files as documents (one per file), or None if there is no stdlib."""
    root = stdlib_dir()
    if root is None:
        return None
    kept: list[tuple[str, bytes]] = []
    total = 0
    for rel, path in sorted(_candidate_files(root, max_file_bytes), key=lambda c: _path_rank(c[0])):
        if total >= max_bytes:
            break
        try:
            data = path.read_bytes()
            data.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if not data.strip() or b"\x00" in data:
            continue
        kept.append((rel, data))
        total += len(data)
    if not kept:
        return None
    kept.sort()
    return InMemorySource(docs=tuple(d for _, d in kept), names=tuple(f"stdlib:{r}" for r, _ in kept))


_NAMES = ("Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Ken", "Margaret", "Dennis", "Frances")
_THINGS = ("apples", "books", "stones", "letters", "coins", "lamps", "boats", "keys", "shells", "maps")
_VERBS = ("found", "counted", "sold", "carried", "painted", "hid", "lost", "gave away", "kept", "mended")


@functools.lru_cache(maxsize=2)
def generated_documents(num_docs: int = 600, seed: int = 0) -> InMemorySource:
    """A small deterministic synthetic corpus (simple English sentences with arithmetic).

    Only a fallback for interpreters without stdlib sources: it has enough structure (names,
    counts, sums) for a byte model to learn something, and a fixed content for a fixed seed.
    """
    rng = random.Random(seed)
    docs = []
    for i in range(num_docs):
        lines = [f"Story {i}."]
        for _ in range(rng.randint(3, 8)):
            who, what, verb = rng.choice(_NAMES), rng.choice(_THINGS), rng.choice(_VERBS)
            a, b = rng.randint(1, 99), rng.randint(1, 99)
            lines.append(f"{who} {verb} {a} {what}, then {b} more: {a} + {b} = {a + b} {what}.")
        docs.append("\n".join(lines).encode("utf-8") + b"\n")
    return InMemorySource(docs=tuple(docs), names=tuple(f"generated:{i}" for i in range(num_docs)))


def embedded_corpus(max_bytes: int = DEFAULT_MAX_BYTES) -> InMemorySource:
    """The default corpus: stdlib sources capped at ``max_bytes``, else the generated fallback."""
    docs = stdlib_documents(max_bytes=max_bytes)
    return docs if docs is not None else generated_documents()
