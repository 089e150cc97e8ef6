"""Released BLT checkpoints from the Hugging Face hub, by name, read with bltjax's own loaders.

    import bltjax.hub
    model = bltjax.hub.from_hub("facebook/blt-1b")                  # gated: accept the licence, log in first
    model = bltjax.hub.from_hub("facebook/blt-1b", convert_to="checkpoints/blt-1b")   # + a bltjax copy

``from_hub`` downloads a snapshot of the repository (``huggingface_hub.snapshot_download``: cached, resumable,
``HF_TOKEN`` / ``huggingface-cli login`` for gated repositories) and hands the local directory to
``bltjax.load_pretrained``, which recognises every layout Meta and Hugging Face publish (release
``params.json`` + ``consolidated.pth``, hub-mixin ``config.json`` + ``train_args.json`` + safetensors, a
``transformers`` ``BltForCausalLM`` directory).  No PyTorch is needed.  The entropy model comes from the
same snapshot (``entropy_model/``) or from ``entropy_repo_id``.

The download function is a parameter (``download=``, same keywords as ``snapshot_download``), so the
loading code runs, and is tested, on local directories without a network.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any, Optional

Download = Callable[..., str]


def snapshot_download(**kwargs) -> str:
    """``huggingface_hub.snapshot_download`` (imported on first use; ``pip install huggingface_hub``)."""
    try:
        from huggingface_hub import snapshot_download as download
    except ImportError as e:
        raise ImportError("loading from the Hugging Face hub needs huggingface_hub: pip install huggingface_hub "
                          "(or pip install 'bltjax[hub]')") from e
    return download(**kwargs)


def download_repo(repo_id: str, *, revision: Optional[str] = None, cache_dir: Optional[str | pathlib.Path] = None,
                  token: Optional[str] = None, download: Optional[Download] = None) -> pathlib.Path:
    """Local directory of a snapshot of hub repository ``repo_id`` (downloaded if not cached)."""
    if not repo_id or repo_id.count("/") != 1:
        raise ValueError(f"expected a hub repository id 'owner/name', got {repo_id!r}")
    fetch = download or snapshot_download
    kwargs: dict[str, Any] = {"repo_id": repo_id}
    if revision is not None:
        kwargs["revision"] = revision
    if cache_dir is not None:
        kwargs["cache_dir"] = str(cache_dir)
    if token is not None:
        kwargs["token"] = token
    path = pathlib.Path(fetch(**kwargs))
    if not path.is_dir():
        raise FileNotFoundError(f"download of {repo_id} returned {path}, which is not a directory")
    return path


def from_hub(repo_id: str, *, entropy_repo_id: Optional[str] = None, revision: Optional[str] = None,
             cache_dir: Optional[str | pathlib.Path] = None, token: Optional[str] = None,
             convert_to: Optional[str | pathlib.Path] = None, download: Optional[Download] = None,
             **load_kwargs):
    """Download hub repository ``repo_id`` and load it with ``bltjax.load_pretrained``; returns the
    ``Pretrained`` model (``bltjax.generate`` / ``model.patch`` / ``model.logits`` take it).

    ``entropy_repo_id``: a separate repository holding the entropy model (release layout), when the
    snapshot has no ``entropy_model/``.  ``convert_to``: also write a bltjax checkpoint there
    (``bltjax.convert``) and load that (an existing one is loaded without downloading anything).
    ``load_kwargs`` go to ``load_pretrained`` (``param_dtype="bfloat16"`` halves the memory).
    """
    from bltjax.pretrained import load_pretrained

    if convert_to is not None and (pathlib.Path(convert_to) / "metadata").exists():
        return load_pretrained(convert_to, **{k: v for k, v in load_kwargs.items() if k == "param_dtype"})
    common = dict(revision=revision, cache_dir=cache_dir, token=token, download=download)
    path = download_repo(repo_id, **common)
    if entropy_repo_id is not None:
        load_kwargs.setdefault("entropy_model_dir", str(download_repo(entropy_repo_id, **common)))
    if convert_to is not None:
        from bltjax.convert import convert

        convert(path, convert_to, **load_kwargs)
        return load_pretrained(convert_to, **{k: v for k, v in load_kwargs.items() if k == "param_dtype"})
    return load_pretrained(path, **load_kwargs)


__all__ = ["from_hub", "download_repo", "snapshot_download"]
