"""Training configuration: frozen dataclasses, config-as-code loading, JSON.

An experiment is a Python file exposing ``get_config() -> TrainConfig`` (big_vision style); a file
whose ``get_config`` takes an argument is given it after a colon::

    python -m bltjax.train --config experiments/tiny_shakespeare.py --set optim.lr=1e-3 --set model.dim_global=256
    python -m bltjax.train --config experiments/blt_paper.py:1b

``--set`` overrides are parsed and type-checked by ``bltjax.overrides.apply_overrides`` (re-exported
here), which re-validates the whole config so inconsistent values fail before any compute.

The resolved config is stored as JSON (``config_to_json``) in the workdir and checkpoint metadata;
``model_shape_diff`` compares two of them so a resume refuses a silently changed model shape.

``TrainConfig.data`` (``bltjax.data.DataConfig``) and ``TrainConfig.mesh``
(``bltjax.sharding.MeshConfig``) are owned by other modules; they are typed ``Any`` here and their
classes are imported lazily (``LAZY_CONFIG_CLASSES``) so this module never imports the data or
sharding stacks at import time.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import json
import math
import pathlib
import re
import sys
import typing
from collections.abc import Mapping
from typing import Any, Literal, Optional

from bltjax.config import BLTConfig, check_ranges
from bltjax.overrides import apply_overrides, coerce_value, from_dict, parse_value  # noqa: F401  (re-exported)

Schedule = Literal["cosine", "linear", "constant"]
Precision = Literal["float32", "bfloat16"]

# Field -> "module:Class" of the config sections owned by other modules (imported on first use).
LAZY_CONFIG_CLASSES: dict[str, str] = {
    "data": "bltjax.data:DataConfig",
    "mesh": "bltjax.sharding:MeshConfig",
}


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


# ====================================================================== schema
@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW + global-norm clipping + warmup/decay schedule (design §12.3; defaults = paper).

    ``weight_decay_exclude`` holds regular expressions matched (``re.search``) against the
    "/"-joined parameter path; matching leaves get no weight decay.  Empty (the default) decays
    every parameter, like the official code (a single param group).  ``optim.NO_DECAY_NORMS_EMBEDDINGS``
    is the usual "exclude norms and embeddings" choice.

    ``grad_accum_steps`` micro-batches are accumulated *inside* the train step
    (``optim.accumulate_gradients``), so one step = one optimizer update on ``global_batch_size`` rows.
    """

    lr: float = 4e-4
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    weight_decay_exclude: tuple[str, ...] = ()
    warmup_steps: int = 2000
    schedule: Schedule = "cosine"
    lr_min_ratio: float = 0.1
    clip: Optional[float] = 1.0  # global-norm clip; None disables
    z_loss: float = 0.0
    grad_accum_steps: int = 1

    def validate(self) -> OptimConfig:
        check_ranges(self, "optim.")
        _check(self.lr > 0 and math.isfinite(self.lr), f"optim.lr must be a positive number, got {self.lr}")
        _check(0.0 <= self.b1 < 1.0, f"optim.b1 must be in [0, 1), got {self.b1}")
        _check(0.0 <= self.b2 < 1.0, f"optim.b2 must be in [0, 1), got {self.b2}")
        _check(self.eps > 0, f"optim.eps must be > 0, got {self.eps}")
        _check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(self.schedule in typing.get_args(Schedule),
               f"optim.schedule must be one of {typing.get_args(Schedule)}, got {self.schedule!r}")
        _check(0.0 <= self.lr_min_ratio <= 1.0, f"optim.lr_min_ratio must be in [0, 1], got {self.lr_min_ratio}")
        _check(self.clip is None or self.clip > 0, f"optim.clip must be > 0 or None, got {self.clip}")
        _check(self.z_loss >= 0, f"optim.z_loss must be >= 0, got {self.z_loss}")
        _check(self.grad_accum_steps >= 1, f"optim.grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        for pattern in self.weight_decay_exclude:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"optim.weight_decay_exclude: bad regular expression {pattern!r}: {e}") from e
        return self


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """When to save and what to keep (Orbax keep policies).

    Saves happen every ``every`` steps (and at the end / on preemption); the ``keep_latest`` most
    recent are kept, plus every step that is a multiple of ``keep_every`` (permanent) when set.
    """

    every: int = 1000
    keep_latest: int = 3
    keep_every: Optional[int] = None
    async_save: bool = True

    def validate(self) -> CheckpointConfig:
        check_ranges(self, "checkpoint.")
        _check(self.every >= 1, f"checkpoint.every must be >= 1, got {self.every}")
        _check(self.keep_latest >= 1, f"checkpoint.keep_latest must be >= 1, got {self.keep_latest}")
        if self.keep_every is not None:
            _check(self.keep_every >= 1, f"checkpoint.keep_every must be >= 1 or None, got {self.keep_every}")
            _check(self.keep_every % self.every == 0,
                   f"checkpoint.keep_every ({self.keep_every}) must be a multiple of checkpoint.every "
                   f"({self.every}), otherwise no saved step is ever kept permanently")
        return self


def _lazy_default(field_name: str):
    """default_factory building the lazily imported section class with its defaults."""

    def make() -> Any:
        try:
            cls = resolve_config_class(field_name)
        except ImportError as e:
            raise ImportError(f"TrainConfig.{field_name} defaults to {LAZY_CONFIG_CLASSES[field_name]}, "
                              f"which cannot be imported ({e}); pass {field_name}=... explicitly") from e
        return cls()

    make.__name__ = f"default_{field_name}"
    return make


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a training run needs; an experiment file's ``get_config()`` returns one.

    ``seq_len`` is bytes per row and ``global_batch_size`` rows per optimizer step (all hosts and
    micro-batches together).  ``precision`` is the compute dtype; master weights and optimizer
    state stay float32 (``resolved_model()`` applies it to the model config, overriding
    ``model.dtype``).  ``train_entropy_model=True`` trains ``model.entropy_model`` as a plain byte
    LM; otherwise the BLT is trained and entropy patching reads the frozen entropy model at
    ``entropy_model_checkpoint``.  ``eval_every=0`` disables evaluation.

    ``rows_per_device`` (instead of ``optim.grad_accum_steps``) fixes the rows each batch shard (device of
    the mesh's ``data`` x ``fsdp`` axes) processes at once; the number of micro-batches then follows from
    the mesh: ``global_batch_size / (batch shards x rows_per_device)``.  The same config then fits a
    larger or a smaller slice with the same memory per chip and the same optimizer batch.
    """

    name: str = "blt"
    model: BLTConfig = dataclasses.field(default_factory=BLTConfig)
    data: Any = dataclasses.field(default_factory=_lazy_default("data"))  # bltjax.data.DataConfig
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    mesh: Any = dataclasses.field(default_factory=_lazy_default("mesh"))  # bltjax.sharding.MeshConfig
    train_entropy_model: bool = False
    entropy_model_checkpoint: Optional[str] = None
    seq_len: int = 8192
    global_batch_size: int = 64
    rows_per_device: Optional[int] = None
    steps: int = 100_000
    seed: int = 0
    log_every: int = 50
    eval_every: int = 1000
    eval_batches: int = 16
    precision: Precision = "float32"
    workdir: Optional[str] = None
    tensorboard: bool = True

    def resolved_model(self) -> BLTConfig:
        """The model config the trainer builds: compute dtype = ``precision``, fp32 parameters."""
        return dataclasses.replace(self.model, dtype=self.precision, param_dtype="float32")

    @property
    def micro_batch_size(self) -> int:
        """Rows per micro-batch when ``optim.grad_accum_steps`` > 1."""
        return self.global_batch_size // self.optim.grad_accum_steps

    @property
    def bytes_per_step(self) -> int:
        return self.global_batch_size * self.seq_len

    def validate(self) -> TrainConfig:
        """Check every section, then the cross-field constraints; raise ValueError naming the keys."""
        check_ranges(self)  # every numeric field, by dotted key, before any derived size
        _check(bool(self.name) and "/" not in self.name,
               f"name must be a non-empty string without '/', got {self.name!r}")
        self.model.validate()
        self.optim.validate()
        self.checkpoint.validate()
        _validate_section("data", self.data)
        _validate_section("mesh", self.mesh)
        _check(self.seq_len >= 2, f"seq_len must be >= 2 bytes, got {self.seq_len}")
        _check(self.global_batch_size >= 1, f"global_batch_size must be >= 1, got {self.global_batch_size}")
        _check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        _check(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")
        _check(self.eval_every >= 0, f"eval_every must be >= 0 (0 disables eval), got {self.eval_every}")
        _check(self.eval_every == 0 or self.eval_batches >= 1,
               f"eval_batches must be >= 1 when eval_every > 0, got {self.eval_batches}")
        _check(self.precision in typing.get_args(Precision),
               f"precision must be one of {typing.get_args(Precision)}, got {self.precision!r}")
        _check(self.model.param_dtype == "float32",
               f"model.param_dtype must be 'float32' for training (fp32 master weights; 'precision' sets "
               f"the compute dtype), got {self.model.param_dtype!r}")
        accum = self.optim.grad_accum_steps
        _check(self.rows_per_device is None or accum == 1,
               f"set rows_per_device ({self.rows_per_device}) or optim.grad_accum_steps ({accum}), not both: "
               "rows_per_device derives the micro-batches from the mesh")
        _check(self.global_batch_size % accum == 0,
               f"global_batch_size ({self.global_batch_size}) must be divisible by optim.grad_accum_steps ({accum})")
        _check(self.optim.warmup_steps < self.steps,
               f"optim.warmup_steps ({self.optim.warmup_steps}) must be < steps ({self.steps})")
        if self.train_entropy_model:
            em = self.model.entropy_model
            _check(em is not None, "train_entropy_model=True needs model.entropy_model (the byte LM to train)")
            _check(self.seq_len <= em.max_seqlen,
                   f"seq_len ({self.seq_len}) exceeds model.entropy_model.max_seqlen ({em.max_seqlen})")
        else:
            _check(self.seq_len <= self.model.max_encoder_seq_length,
                   f"seq_len ({self.seq_len}) exceeds model.max_encoder_seq_length "
                   f"({self.model.max_encoder_seq_length}), the per-row byte cap of the local models")
            mp = self.model.patcher.max_patches
            _check(mp is None or mp <= self.model.max_seqlen,
                   f"model.patcher.max_patches ({mp}) exceeds model.max_seqlen ({self.model.max_seqlen}), "
                   f"the global model's patch capacity")
            if self.model.patcher.mode == "entropy":
                _check(self.entropy_model_checkpoint is not None,
                       "model.patcher.mode='entropy' needs entropy_model_checkpoint (a trained entropy model); "
                       "train one first with train_entropy_model=True, or use a 'static'/'space' patcher")
            else:
                _check(self.entropy_model_checkpoint is None,
                       f"entropy_model_checkpoint is only used with model.patcher.mode='entropy' "
                       f"(mode is {self.model.patcher.mode!r})")
        return self


def _validate_section(name: str, section: Any) -> None:
    """Call ``section.validate()`` when it exists and takes no required argument."""
    _check(section is not None, f"{name} must be set")
    fn = getattr(section, "validate", None)
    if fn is None or not callable(fn):
        return
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        fn()
        return
    required = [p for p in sig.parameters.values()
                if p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not required:
        fn()


def resolve_config_class(field_name: str) -> type:
    """Import the class of a lazily typed TrainConfig section (``"data"`` / ``"mesh"``)."""
    if field_name not in LAZY_CONFIG_CLASSES:
        raise KeyError(f"no lazy config class registered for {field_name!r}")
    module_name, _, cls_name = LAZY_CONFIG_CLASSES[field_name].partition(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, cls_name)
    except AttributeError as e:
        raise ImportError(f"{module_name} has no {cls_name}") from e


# ====================================================================== loading
def split_config_arg(spec: str | pathlib.Path) -> tuple[pathlib.Path, Optional[str]]:
    """``"experiments/blt_paper.py:1b"`` -> ``(Path("experiments/blt_paper.py"), "1b")``; no argument -> None."""
    text = str(spec)
    head, sep, arg = text.rpartition(":")
    if sep and head.endswith(".py") and arg and "/" not in arg:
        return pathlib.Path(head), arg
    return pathlib.Path(text), None


def load_config(path: str | pathlib.Path) -> TrainConfig:
    """Import the Python file at ``path`` and return its ``get_config()`` (not yet validated).

    ``path`` may end in ``:ARG`` (``experiments/blt_paper.py:1b``): the file's ``get_config(ARG)`` is called.
    """
    path, arg = split_config_arg(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    module_name = f"_bltjax_experiment_{path.stem}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import config file {path} (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses defined in the file need their module registered
    try:
        spec.loader.exec_module(module)
    except Exception:
        sys.modules.pop(module_name, None)
        raise
    get_config = getattr(module, "get_config", None)
    if get_config is None or not callable(get_config):
        raise ValueError(f"config file {path} must define a function get_config() -> TrainConfig")
    cfg = get_config() if arg is None else get_config(arg)
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"{path}: get_config() returned {type(cfg).__name__}, expected TrainConfig")
    return cfg


# ====================================================================== (de)serialisation
def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict of a dataclass tree (tuples stay tuples; ``config_to_json`` makes lists)."""
    return dataclasses.asdict(cfg)


def config_to_json(cfg: Any) -> str:
    return json.dumps(config_to_dict(cfg), indent=2, sort_keys=True)


def _lazy_section(name: str) -> Optional[type]:
    return resolve_config_class(name) if name in LAZY_CONFIG_CLASSES else None


def config_from_dict(d: Mapping[str, Any], cls: type = TrainConfig,
                     classes: Optional[Mapping[str, type]] = None) -> Any:
    """Inverse of ``config_to_dict`` (also accepts ``json.loads(config_to_json(cfg))``).

    ``classes`` maps dotted paths of ``Any``-typed sections to their class (default for TrainConfig:
    ``LAZY_CONFIG_CLASSES``, imported on demand).  Unknown keys raise ValueError.
    """
    return from_dict(cls, d, "", classes, _lazy_section)


def config_from_json(text: str, cls: type = TrainConfig, classes: Optional[Mapping[str, type]] = None) -> Any:
    return config_from_dict(json.loads(text), cls, classes)


# ====================================================================== resume compatibility
# BLTConfig fields that change parameter shapes or the parameter tree (checkpoint-incompatible).
MODEL_SHAPE_FIELDS: tuple[str, ...] = (
    "vocab_size",
    "dim_local_encoder", "dim_local_decoder", "dim_global",
    "n_layers_local_encoder", "n_layers_local_decoder", "n_layers_global",
    "n_heads_local_encoder", "n_heads_local_decoder", "n_heads_global",
    "n_kv_heads", "n_kv_heads_global",
    "multiple_of", "ffn_dim_multiplier",
    "cross_attn_encoder", "cross_attn_decoder", "cross_attn_k", "cross_attn_nheads",
    "cross_attn_all_layers_encoder", "cross_attn_all_layers_decoder",
    "encoder_hash_byte_group_size", "encoder_hash_byte_group_vocab", "encoder_hash_byte_group_nb_functions",
    "scan_layers",  # stacked vs per-layer parameter tree
)
# TransformerConfig fields (the entropy model) with the same property.
ENTROPY_SHAPE_FIELDS: tuple[str, ...] = (
    "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "vocab_size", "multiple_of", "ffn_dim_multiplier",
)


def _norm(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_norm(x) for x in v)
    return v


def model_shape_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Model fields whose change makes a checkpoint incompatible, as ``"field: old -> new"`` lines.

    Accepts BLTConfig dicts or whole TrainConfig dicts (their ``"model"`` is compared).  A field
    missing from a dict (an older config) counts as its BLTConfig default.  dtype, remat,
    attention_impl, patcher, rope/eps settings are not shape fields and are ignored.  Empty list =
    compatible.
    """
    old = old.get("model", old) if isinstance(old.get("model", None), Mapping) else old
    new = new.get("model", new) if isinstance(new.get("model", None), Mapping) else new
    defaults = config_to_dict(BLTConfig())
    out = []
    for name in MODEL_SHAPE_FIELDS:
        a, b = _norm(old.get(name, defaults[name])), _norm(new.get(name, defaults[name]))
        if a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    ea, eb = old.get("entropy_model"), new.get("entropy_model")
    if (ea is None) != (eb is None):
        out.append(f"entropy_model: {'None' if ea is None else 'set'} -> {'None' if eb is None else 'set'}")
    elif ea is not None:
        from bltjax.config import TransformerConfig

        edef = dataclasses.asdict(TransformerConfig())
        for name in ENTROPY_SHAPE_FIELDS:
            a, b = _norm(ea.get(name, edef[name])), _norm(eb.get(name, edef[name]))
            if a != b:
                out.append(f"entropy_model.{name}: {a!r} -> {b!r}")
    return out


__all__ = [
    "OptimConfig", "CheckpointConfig", "TrainConfig", "LAZY_CONFIG_CLASSES", "resolve_config_class",
    "split_config_arg", "load_config", "parse_value", "coerce_value", "apply_overrides",
    "config_to_dict", "config_to_json", "config_from_dict", "config_from_json",
    "MODEL_SHAPE_FIELDS", "ENTROPY_SHAPE_FIELDS", "model_shape_diff",
]
