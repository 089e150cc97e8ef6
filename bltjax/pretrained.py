"""Turn any checkpoint directory into a model, and run a loaded BLT: patch, entropies, logits.

This module is the one place that reads a directory into ``(config, params, entropy params)``:
``load_pretrained`` (a BLT, as :class:`Pretrained`), ``open_checkpoint`` (a BLT and/or entropy model,
as :class:`LoadedCheckpoint`, for the tools) and ``load_entropy_model`` (just the entropy model).

    model = bltjax.load_pretrained("hf-weights/blt_1b")      # entropy_model/ beside or inside
    lengths = model.patch(tokens)                            # int32 [B, P]
    logits = model.logits(tokens)                            # float32 [B, N, 260]

Layouts (detected from the files present):

* **release**: ``params.json`` (TrainArgs) + ``consolidated.pth`` (or ``consolidated/consolidated.pth``);
  the entropy model in ``entropy_model/`` inside the directory or next to it (design §16.1);
* **hub-mixin** (``facebook/blt-1b`` style): ``config.json`` = ``{"args": ...}``, ``train_args.json``
  (the params.json) and ``model.safetensors`` with official key names;
* **hf**: a ``transformers`` ``BltForCausalLM`` directory (``config.json`` with ``model_type: "blt"``);
* **bltjax**: a directory written by ``python -m bltjax.convert`` (``params/`` + ``metadata/``);
* **workdir**: a ``python -m bltjax.train`` run directory (``bltjax.workdir``), newest checkpoint;
* **entropy-only**: a release ``entropy_model/`` (``train_entropy_model: true``) or an entropy-model
  training run (``open_checkpoint`` / ``load_entropy_model`` only).

Inference follows the checkpoint's conventions: official checkpoints patch with
``include_next_token=True`` (lengths sum to N + 1, like the official generation path), HF checkpoints
return and accept the HF patcher's lengths (sum N, ``-1`` end markers for shorter batch rows).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from bltjax import workdir as workdir_lib
from bltjax.config import BLTConfig, PatcherConfig, TransformerConfig
from bltjax.io import hf as hf_io
from bltjax.io import release
from bltjax.io.safetensors_np import load_safetensors_dir
from bltjax.io.torch_pth import load_torch_pth
from bltjax.padding import bucket
from bltjax.storage import stage_dir, stage_local

FORMAT = "bltjax"
FORMAT_VERSION = 1
VOCAB = 260

PathLike = Union[str, pathlib.Path]


# ----------------------------------------------------------------------------------------------
# The loaded model
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class Pretrained:
    """A loaded BLT: ``config``, ``params`` (BLT pytree), ``entropy_params`` (or None), and jitted
    ``patch`` / ``entropies`` / ``logits`` (compiled once per input shape)."""

    config: BLTConfig
    params: dict
    entropy_params: Optional[dict] = None
    source: str = "release"
    path: Optional[pathlib.Path] = None
    _fns: dict = dataclasses.field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ properties
    @property
    def hf_convention(self) -> bool:
        """True when patch lengths follow the Hugging Face port (rows sum to N, design §16.3)."""
        return bool(self.config.patcher.patches_sum_to_n)

    @property
    def patching_mode(self) -> str:
        return self.config.patcher.mode

    @property
    def bundle(self) -> dict:
        out = {"blt": self.params}
        if self.entropy_params is not None:
            out["entropy"] = self.entropy_params
        return out

    # ------------------------------------------------------------------ validation
    def check_tokens(self, tokens: Any) -> np.ndarray:
        """``tokens`` as int32 ``[B, N]`` or a ValueError saying what is wrong."""
        arr = np.asarray(tokens)
        if arr.ndim != 2:
            raise ValueError(f"tokens must be a 2-D [batch, length] array of BLT ids, got shape {arr.shape}")
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise ValueError(f"tokens must be non-empty, got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"tokens must be integers (BLT ids: byte + 4, BOS=1, EOS=2), got dtype {arr.dtype}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= VOCAB:
            raise ValueError(f"token ids must be in 0..{VOCAB - 1} (byte + 4, BOS=1, EOS=2), got range {lo}..{hi}")
        n = arr.shape[1]
        if n > self.config.max_encoder_seq_length:
            raise ValueError(f"sequence length {n} exceeds the model's max_encoder_seq_length="
                             f"{self.config.max_encoder_seq_length}")
        return arr.astype(np.int32)

    def _check_row_lengths(self, lengths: Any, b: int, n: int) -> np.ndarray:
        if lengths is None:
            return np.full((b,), n, np.int32)
        arr = np.asarray(lengths)
        if arr.shape != (b,) or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"lengths must be an integer array of shape ({b},), got {arr.shape} {arr.dtype}")
        if (arr < 1).any() or (arr > n).any():
            raise ValueError(f"lengths must be in 1..{n}, got {arr.tolist()}")
        if (arr != n).any() and not self._can_pad:
            raise ValueError("ragged rows (lengths < N) are not supported with entropy_flatten_rows "
                             "(the official realtime path concatenates rows)")
        return arr.astype(np.int32)

    def _check_lengths(self, lengths: Any, n_b: np.ndarray) -> np.ndarray:
        """User/patcher lengths -> official-convention lengths (rows sum to their length + 1)."""
        arr = np.asarray(lengths)
        b = n_b.shape[0]
        if arr.ndim != 2 or arr.shape[0] != b or arr.shape[1] == 0:
            raise ValueError(f"patch_lengths must be [batch={b}, patches], got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"patch_lengths must be integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int32)
        sums = arr.sum(axis=1)
        if self.hf_convention:
            ok = (sums == n_b) | (sums == n_b + 1)
            if (arr[:, :-1] < 0).any() or (arr[:, -1] < -1).any() or not ok.all():
                raise ValueError(f"HF-convention patch_lengths must be >= 0 (-1 allowed as the last column) and "
                                 f"rows must sum to their length N (or N+1 for shorter batch rows); got sums "
                                 f"{sums.tolist()} for lengths {n_b.tolist()}")
            arr = hf_io.official_from_hf_lengths(arr)
        elif (arr < 0).any() or not (sums == n_b + 1).all():
            raise ValueError(f"patch_lengths must be >= 0 and every row must sum to its length + 1 "
                             f"({(n_b + 1).tolist()}; official inference convention: the last patch includes "
                             f"the next byte), got {sums.tolist()}")
        if (arr[:, 0] != 1).any():
            raise ValueError("the first patch must have length 1 (the BOS patch, design §8)")
        if arr.shape[1] > self.config.max_seqlen + 1:
            raise ValueError(f"{arr.shape[1]} patches exceed the global model's max_seqlen={self.config.max_seqlen}")
        return arr

    # ------------------------------------------------------------------ jitted pieces
    @property
    def _can_pad(self) -> bool:
        """Right padding leaves real positions unchanged unless rows share one entropy context."""
        return not self.config.patcher.entropy_flatten_rows

    def _fn(self, name: str, make: Callable[[], Callable]) -> Callable:
        if name not in self._fns:
            self._fns[name] = make()
        return self._fns[name]

    def _patcher_cfg(self):
        pcfg = self.config.patcher
        if self.hf_convention:  # HF splits after dropping the virtual position: split in hf_patch_lengths
            pcfg = dataclasses.replace(pcfg, max_patch_length=None)
        return pcfg

    def _pad_tokens(self, toks: np.ndarray, n_b: np.ndarray) -> np.ndarray:
        """Right-pad to a bucketed length with BOE (0) and blank everything past each row's length.

        Every computation here is causal, so padding never changes real positions; the one padded
        slot that joins a real patch (position N, the virtual next byte) lands in the last patch,
        whose global state nothing reads (design §8, §10).
        """
        b, n = toks.shape
        width = bucket(n, cap=self.config.max_encoder_seq_length) if self._can_pad else n
        out = np.zeros((b, width), np.int32)
        out[:, :n] = np.where(np.arange(n)[None, :] < n_b[:, None], toks, 0)
        return out

    def _entropies_padded(self, toks_p: np.ndarray) -> jax.Array:
        if self.entropy_params is None or self.config.entropy_model is None:
            raise ValueError(f"this checkpoint has no entropy model (patching mode {self.patching_mode!r})")
        from bltjax.model import entropy_model

        ecfg, pcfg = self.config.entropy_model, self.config.patcher
        fn = self._fn("entropies", lambda: jax.jit(
            lambda p, t: entropy_model.compute_entropies(p, ecfg, pcfg, t)))
        return fn(self.entropy_params, jnp.asarray(toks_p))

    # ------------------------------------------------------------------ public API
    def entropies(self, tokens: Any, lengths: Any = None) -> np.ndarray:
        """Next-byte entropies (nats) of the entropy model, float32 ``[B, N]`` (design §2).

        ``lengths`` (optional, int ``[B]``): real tokens per row of a right-padded batch; later
        positions are returned as 0.
        """
        toks = self.check_tokens(tokens)
        n_b = self._check_row_lengths(lengths, *toks.shape)
        ent = np.asarray(self._entropies_padded(self._pad_tokens(toks, n_b)), np.float32)[:, :toks.shape[1]]
        return np.where(np.arange(toks.shape[1])[None, :] < n_b[:, None], ent, 0.0).astype(np.float32)

    def patch(self, tokens: Any, lengths: Any = None) -> np.ndarray:
        """Patch lengths int32 ``[B, P]``, right-padded with 0, trailing all-zero columns trimmed.

        Official checkpoints: ``include_next_token=True`` (rows sum to N + 1, the official inference
        path).  HF checkpoints: exactly what the HF patcher returns (rows sum to N; see
        :func:`bltjax.io.hf.hf_patch_lengths`).  ``lengths``: as in :meth:`entropies`; each row is
        patched on its own (rows sum to their own length + 1).
        """
        from bltjax import patcher
        from bltjax.model import blt

        toks = self.check_tokens(tokens)
        n_b = self._check_row_lengths(lengths, *toks.shape)
        toks_p = self._pad_tokens(toks, n_b)
        cfg, pcfg = self.config, self._patcher_cfg()
        # static mode: the training layout [1, ps, ps, ..., rest] (patcher.model_start_mask), never cut
        max_patches = toks_p.shape[1] + 1 if self.patching_mode == "static" else None
        ent = self._entropies_padded(toks_p) if self.patching_mode == "entropy" else None
        fn = self._fn("lengths", lambda: jax.jit(lambda t, e, nb: blt.patch_lengths(
            cfg, None, t, entropies_bn=e, patcher_cfg=pcfg, max_patches=max_patches, lengths_b=nb)[0]))
        out = fn(jnp.asarray(toks_p), ent, jnp.asarray(n_b))
        out = patcher.trim_lengths(np.asarray(out)).astype(np.int32)
        if self.hf_convention:
            out = hf_io.hf_patch_lengths(out, self.config.patcher.max_patch_length)
        return out

    def logits(self, tokens: Any, patch_lengths: Any = None, lengths: Any = None) -> np.ndarray:
        """Next-byte logits float32 ``[B, N, 260]`` (row i predicts token i+1).

        ``patch_lengths`` default: :meth:`patch`.  Given explicitly they follow the checkpoint's
        convention (official: rows sum to N + 1; HF: what :meth:`patch` returns for HF checkpoints).
        ``lengths``: as in :meth:`entropies` (logits past a row's length are 0).
        """
        from bltjax.model import blt

        toks = self.check_tokens(tokens)
        b, n = toks.shape
        n_b = self._check_row_lengths(lengths, b, n)
        plen = self.patch(toks, n_b) if patch_lengths is None else patch_lengths
        plen = self._check_lengths(plen, n_b)
        p = plen.shape[1]
        plen = np.pad(plen, [(0, 0), (0, bucket(p, 32, cap=max(p, self.config.max_seqlen + 1)) - p)])
        cfg = self.config
        fn = self._fn("logits", lambda: jax.jit(lambda prm, t, ln: blt.forward(prm, cfg, t, ln)))
        out = np.asarray(fn(self.params, jnp.asarray(self._pad_tokens(toks, n_b)), jnp.asarray(plen)),
                         dtype=np.float32)[:, :n]
        return np.where((np.arange(n)[None, :] < n_b[:, None])[..., None], out, 0.0).astype(np.float32)

    def num_params(self) -> dict[str, int]:
        """Parameter counts of the loaded trees."""
        count = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))  # noqa: E731
        out = {"blt": count(self.params)}
        if self.entropy_params is not None:
            out["entropy_model"] = count(self.entropy_params)
        return out


# ----------------------------------------------------------------------------------------------
# Layout detection and loading
# ----------------------------------------------------------------------------------------------


def detect_layout(path: PathLike) -> str:
    """``"bltjax"``, ``"workdir"`` (a ``bltjax.train`` run), ``"hf"``, ``"hub-mixin"`` or ``"release"``;
    a clear error otherwise."""
    path = workdir_lib.resolve(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint directory not found: {path}")
    if not path.is_dir():
        raise ValueError(f"expected a checkpoint directory, got a file: {path}")
    if (path / "params").is_dir() and (path / "metadata").exists():
        return "bltjax"
    if workdir_lib.is_workdir(path):
        return "workdir"
    if (path / "config.json").is_file():
        cfg = json.loads((path / "config.json").read_text())
        if cfg.get("model_type") == "blt":
            return "hf"
        if "args" in cfg or (path / "train_args.json").is_file():
            return "hub-mixin"
        raise ValueError(f"{path}/config.json is neither a Hugging Face BLT config (model_type 'blt') nor a "
                         f"hub-mixin config ({{'args': ...}} with train_args.json)")
    if (path / "params.json").is_file():
        return "release"
    raise FileNotFoundError(f"{path} is not a BLT checkpoint: missing params.json (official release), "
                            f"config.json (Hugging Face / hub) or params/ + metadata/ (bltjax)")


def _find_release_weights(directory: pathlib.Path) -> pathlib.Path:
    for candidate in (directory / "consolidated" / "consolidated.pth", directory / "consolidated.pth"):
        if candidate.is_file():
            return stage_local(candidate, what="release weights")
    raise FileNotFoundError(f"{directory}: missing consolidated.pth (looked for consolidated/consolidated.pth "
                            f"and consolidated.pth)")


def _read_json(path: pathlib.Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}")
    return json.loads(path.read_text())


def _load_entropy_dir(directory: pathlib.Path, official_realtime: bool, dtype: Any
                      ) -> tuple[TransformerConfig, dict]:
    ecfg = release.entropy_config_from_params_json(_read_json(directory / "params.json"),
                                                   official_realtime=official_realtime)
    try:
        sd = load_torch_pth(_find_release_weights(directory))
    except FileNotFoundError:
        if not any(directory.glob("*.safetensors")):  # hub-mixin entropy models ship safetensors
            raise
        sd = load_safetensors_dir(stage_dir(directory, what="entropy model"))
    return ecfg, release.state_dict_to_params(sd, ecfg, dtype)


def _entropy_dir(path: pathlib.Path, override: Optional[PathLike]) -> pathlib.Path:
    if override is not None:
        d = workdir_lib.resolve(override)
        if not (d / "params.json").is_file():
            raise FileNotFoundError(f"entropy model directory {d}: missing params.json")
        return d
    candidates = [path / "entropy_model", path.parent / "entropy_model"]
    for d in candidates:
        if (d / "params.json").is_file():
            return d
    raise FileNotFoundError(f"{path} patches with an entropy model, but none was found: looked for "
                            f"{' and '.join(str(c / 'params.json') for c in candidates)} "
                            f"(pass entropy_model_dir=...)")


def _load_release(path: pathlib.Path, params_json: dict, weights: Callable[[], dict], *, official_realtime: bool,
                  entropy_model_dir: Optional[PathLike], dtype: Any) -> tuple[BLTConfig, dict, Optional[dict]]:
    cfg = release.config_from_params_json(params_json, official_realtime=official_realtime)
    if isinstance(cfg, TransformerConfig):
        raise ValueError(f"{path} is an entropy-model checkpoint (train_entropy_model: true); load the BLT "
                         f"checkpoint that uses it instead")
    params = release.state_dict_to_params(weights(), cfg, dtype)
    entropy = None
    if cfg.patcher.mode == "entropy":
        ecfg, entropy = _load_entropy_dir(_entropy_dir(path, entropy_model_dir), official_realtime, dtype)
        cfg = dataclasses.replace(cfg, entropy_model=ecfg)
    return cfg, params, entropy


def _to_device(tree: Optional[dict]) -> Optional[dict]:
    return None if tree is None else jax.tree.map(jnp.asarray, tree)


def _load_workdir(path: pathlib.Path, entropy_model_dir: Optional[PathLike]):
    """The newest checkpoint of a ``bltjax.train`` workdir (and its frozen entropy model, if any)."""
    tcfg, params, _ = workdir_lib.load_run(path)
    if tcfg.train_entropy_model:
        raise ValueError(f"{path} is an entropy-model training run; use it as --entropy-model of "
                         f"bltjax.entropy_tools / bltjax.eval, or as entropy_model_checkpoint of a BLT run")
    cfg = tcfg.resolved_model()
    entropy = None
    if cfg.patcher.mode == "entropy":
        src = entropy_model_dir or tcfg.entropy_model_checkpoint
        if src is None:
            raise ValueError(f"{path}: entropy patching but the run names no entropy_model_checkpoint")
        em = load_entropy_model(src)
        entropy = em.params
        if cfg.entropy_model is None:
            cfg = dataclasses.replace(cfg, entropy_model=em.config)
    params = jax.tree.map(np.asarray, params)
    entropy = None if entropy is None else jax.tree.map(np.asarray, entropy)
    return dataclasses.replace(cfg, dtype="float32"), params, entropy


def read_checkpoint(path: PathLike, *, official_realtime: bool = False, param_dtype: str = "float32",
                    entropy_model_dir: Optional[PathLike] = None) -> tuple[str, BLTConfig, dict, Optional[dict]]:
    """Host-side load: ``(layout, config, blt params, entropy params or None)`` as numpy trees."""
    path = workdir_lib.resolve(path)  # gs://...: bltjax checkpoints and workdirs are read in place, other
    layout = detect_layout(path)      # layouts' weight files are staged to the local cache first
    dtype = param_dtype
    if layout == "release":
        cfg, params, entropy = _load_release(
            path, _read_json(path / "params.json"), lambda: load_torch_pth(_find_release_weights(path)),
            official_realtime=official_realtime, entropy_model_dir=entropy_model_dir, dtype=dtype)
    elif layout == "hub-mixin":
        cfg, params, entropy = _load_release(
            path, _read_json(path / "train_args.json"),
            lambda: load_safetensors_dir(stage_dir(path, what="checkpoint")),
            official_realtime=official_realtime, entropy_model_dir=entropy_model_dir, dtype=dtype)
    elif layout == "hf":
        cfg, bundle = hf_io.read_hf_dir(stage_dir(path, what="checkpoint"), dtype)
        params, entropy = bundle["blt"], bundle.get("entropy")
    elif layout == "workdir":
        cfg, params, entropy = _load_workdir(path, entropy_model_dir)
    else:
        from bltjax.checkpoint import load_params

        bundle, meta = load_params(path)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: metadata format {meta.get('format')!r}, expected {FORMAT!r}")
        cfg = BLTConfig.from_dict(meta["config"]).validate()
        params, entropy = bundle["blt"], bundle.get("entropy")
        if param_dtype != "float32":
            cast = lambda a: np.asarray(a).astype(release._np_dtype(param_dtype))  # noqa: E731
            params = jax.tree.map(cast, params)
            entropy = None if entropy is None else jax.tree.map(cast, entropy)
    if cfg.patcher.mode == "entropy" and entropy is None:
        raise ValueError(f"{path}: entropy patching but no entropy-model weights")
    cfg = dataclasses.replace(cfg, param_dtype=param_dtype).validate()
    return layout, cfg, params, entropy


def load_pretrained(path: PathLike, *, official_realtime: bool = False, param_dtype: str = "float32",
                    entropy_model_dir: Optional[PathLike] = None) -> Pretrained:
    """Load a release / hub-mixin / Hugging Face / bltjax checkpoint directory.

    ``official_realtime``: reproduce the official realtime patcher (entropy model settings hard-coded
    by its loader, bf16 entropies on 8192-byte chunks of the flattened batch); default: per-row fp32
    entropies with the entropy model's own params.json (what the parity fixtures record).
    ``param_dtype``: "float32" (default) or "bfloat16" (half the memory; release weights are bf16).
    """
    layout, cfg, params, entropy = read_checkpoint(path, official_realtime=official_realtime,
                                                   param_dtype=param_dtype, entropy_model_dir=entropy_model_dir)
    return Pretrained(config=cfg, params=_to_device(params), entropy_params=_to_device(entropy),
                      source=layout, path=workdir_lib.resolve(path))


# ----------------------------------------------------------------------------------------------
# Any checkpoint for the tools: a BLT and/or an entropy model
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedCheckpoint:
    """What the tools need from a checkpoint directory (see ``open_checkpoint``).

    ``config`` / ``params``: the BLT (None for an entropy-only checkpoint); ``entropy_config`` /
    ``entropy_params``: the entropy model (None if absent); ``patcher``: the patcher settings stored
    with the checkpoint (the BLT's ``config.patcher``, else the release's ``patcher_args``).
    """

    path: str
    config: Optional[BLTConfig]
    params: Any
    entropy_config: Optional[TransformerConfig]
    entropy_params: Any
    patcher: PatcherConfig

    @property
    def is_blt(self) -> bool:
        return self.config is not None and self.params is not None


def _is_entropy_only_release(p: pathlib.Path) -> bool:
    try:
        return bool(_read_json(p / "params.json").get("train_entropy_model"))
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        return False


def _entropy_training_run(path: pathlib.Path, mesh: Any = None) -> Optional[LoadedCheckpoint]:
    """The newest checkpoint of a workdir that trained an entropy model (restored onto ``mesh``), else None."""
    if not workdir_lib.is_workdir(path) or not workdir_lib.read_config(path).train_entropy_model:
        return None
    tcfg, params, _ = workdir_lib.load_run(path, mesh=mesh)
    return LoadedCheckpoint(path=str(path), config=None, params=None, entropy_config=tcfg.model.entropy_model,
                            entropy_params=params, patcher=tcfg.model.patcher)


def open_checkpoint(path: PathLike) -> LoadedCheckpoint:
    """Load any checkpoint: what ``load_pretrained`` reads, an entropy-only release directory, or an
    entropy-model training run."""
    p = workdir_lib.resolve(path)
    if not p.exists():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    run = _entropy_training_run(p)
    if run is not None:
        return run
    if _is_entropy_only_release(p):
        ecfg, params = _load_entropy_dir(p, False, "float32")
        return LoadedCheckpoint(path=str(p), config=None, params=None, entropy_config=ecfg,
                                entropy_params=_to_device(params),
                                patcher=release.patcher_config_from_params_json(_read_json(p / "params.json")))
    pre = load_pretrained(p)
    if not pre.params:  # an entropy-only bundle wrapped in a BLTConfig
        return LoadedCheckpoint(path=str(p), config=None, params=None, entropy_config=pre.config.entropy_model,
                                entropy_params=pre.entropy_params, patcher=pre.config.patcher)
    return LoadedCheckpoint(path=str(p), config=pre.config, params=pre.params,
                            entropy_config=pre.config.entropy_model, entropy_params=pre.entropy_params,
                            patcher=pre.config.patcher)


@dataclasses.dataclass(frozen=True, eq=False)
class EntropyModel:
    """An entropy model ready to score bytes: parameters, its config, and the stored patcher config."""

    params: Any
    config: TransformerConfig
    patcher: PatcherConfig
    path: str = ""


def load_entropy_model(path: PathLike, mesh: Any = None) -> EntropyModel:
    """The entropy model of a checkpoint directory (entropy-only, or a BLT that carries one).

    With a ``mesh`` the parameters are placed on it with the rules table's shardings (an entropy-model
    training run is restored straight onto it); without, they are on the default device.
    """
    p = workdir_lib.resolve(path)
    ck = _entropy_training_run(p, mesh) if p.exists() else None
    if ck is None:
        ck = open_checkpoint(p)
        if mesh is not None and ck.entropy_params is not None:
            from bltjax import sharding

            host = jax.tree.map(np.asarray, ck.entropy_params)  # every process holds the same host copy
            ck = dataclasses.replace(ck, entropy_params=jax.device_put(host, sharding.param_shardings(host, mesh)))
    if ck.entropy_params is None or ck.entropy_config is None:
        raise ValueError(f"{path}: no entropy model found in this checkpoint (need an entropy-model "
                         "directory, e.g. a release's entropy_model/, or a BLT checkpoint that includes one)")
    return EntropyModel(params=ck.entropy_params, config=ck.entropy_config, patcher=ck.patcher, path=ck.path)


__all__ = ["Pretrained", "load_pretrained", "read_checkpoint", "detect_layout", "FORMAT", "FORMAT_VERSION",
           "LoadedCheckpoint", "open_checkpoint", "EntropyModel", "load_entropy_model"]
