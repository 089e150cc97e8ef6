"""Training configuration: frozen dataclasses, config-as-code loading, ``--set`` overrides, JSON.

An experiment is a Python file exposing ``get_config() -> TrainConfig`` (big_vision style)::

    python -m bltjax.train --config experiments/tiny_cpu.py --set optim.lr=1e-3 --set model.dim_global=256

``apply_overrides`` walks a dotted path down any tree of frozen dataclasses, parses the value with
``ast.literal_eval`` (falling back to the raw string) and coerces it to the field's annotation
(int, float, bool, str, Optional[...], tuple[...], Literal[...], nested dataclasses), then
re-validates the whole config so inconsistent values fail before any compute.

The resolved config is stored as JSON (``config_to_json``) in the workdir and checkpoint metadata;
``model_shape_diff`` compares two of them so a resume refuses a silently changed model shape.

``TrainConfig.data`` (``bltjax.data.DataConfig``) and ``TrainConfig.mesh``
(``bltjax.sharding.MeshConfig``) are owned by other modules; they are typed ``Any`` here and their
classes are imported lazily (``LAZY_CONFIG_CLASSES``) so this module never imports the data or
sharding stacks at import time.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import importlib
import importlib.util
import inspect
import json
import math
import pathlib
import re
import sys
import types
import typing
from typing import Any, Literal, Mapping, Optional, Sequence, Union

from bltjax.config import BLTConfig, check_ranges

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
    """AdamW + global-norm clipping + warmup/decay schedule (spec §12.3; defaults = paper).

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

    def validate(self) -> "OptimConfig":
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
    """When to save and what to keep (Orbax policies, jax-stack §5.7).

    Saves happen every ``every`` steps (and at the end / on preemption); the ``keep_latest`` most
    recent are kept, plus every step that is a multiple of ``keep_every`` (permanent) when set.
    """

    every: int = 1000
    keep_latest: int = 3
    keep_every: Optional[int] = None
    async_save: bool = True

    def validate(self) -> "CheckpointConfig":
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

    def validate(self) -> "TrainConfig":
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
def load_config(path: str | pathlib.Path) -> TrainConfig:
    """Import the Python file at ``path`` and return its ``get_config()`` (not yet validated)."""
    path = pathlib.Path(path)
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
    cfg = get_config()
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"{path}: get_config() returned {type(cfg).__name__}, expected TrainConfig")
    return cfg


# ====================================================================== type coercion
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null"}


@functools.lru_cache(maxsize=None)
def _field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a dataclass; unresolvable ones (TYPE_CHECKING imports) become Any."""
    try:
        return typing.get_type_hints(cls)
    except Exception:
        out: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            module_globals = vars(sys.modules.get(klass.__module__, types.ModuleType("_")))
            for name, ann in getattr(klass, "__annotations__", {}).items():
                try:
                    out[name] = eval(ann, module_globals) if isinstance(ann, str) else ann
                except Exception:
                    out[name] = Any
        return out


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _optional_dataclass(tp: Any) -> Optional[type]:
    """The dataclass inside ``tp`` (itself or ``Optional[dc]``), else None."""
    if _is_dataclass_type(tp):
        return tp
    if typing.get_origin(tp) in (Union, types.UnionType):
        dcs = [a for a in typing.get_args(tp) if _is_dataclass_type(a)]
        if len(dcs) == 1:
            return dcs[0]
    return None


def _split_sequence(text: str) -> list[str]:
    """'a,b' / '(a, b)' / '[a,b]' -> ['a', 'b'] for sequences of bare words."""
    text = text.strip()
    if text[:1] in "([" and text[-1:] in ")]":
        text = text[1:-1]
    return [p.strip() for p in text.split(",") if p.strip()]


def parse_value(raw: str) -> Any:
    """``ast.literal_eval(raw)``, or the raw string when it is not a Python literal."""
    try:
        return ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return raw


def coerce_value(value: Any, tp: Any, where: str = "value", raw: Optional[str] = None) -> Any:
    """Return ``value`` converted to annotation ``tp`` or raise ValueError naming ``where``.

    ``raw`` is the original command-line text, used when a ``str`` field received something that
    ``literal_eval`` turned into a number (``name=123`` -> ``"123"``).
    """
    if tp is Any or tp is object:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    shown = raw if raw is not None else repr(value)

    def fail(expected: str) -> ValueError:
        return ValueError(f"{where}: expected {expected}, got {type(value).__name__} {shown}")

    if origin in (Union, types.UnionType):
        allows_none = type(None) in args
        if value is None or (allows_none and isinstance(value, str) and value.strip().lower() in _NONE):
            if allows_none:
                return None
            raise fail(_type_name(tp))
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce_value(value, arg, where, raw)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(f"{where}: {shown} does not match {_type_name(tp)} ({'; '.join(errors)})")
    if origin is Literal:
        for choice in args:
            if value == choice and type(value) is type(choice):
                return choice
        text = raw if raw is not None else (value if isinstance(value, str) else None)
        if text is not None and text in args:
            return text
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=3)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{where}: {shown} is not one of {list(args)}{hint}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise fail("bool (true/false)")
    if tp is int:
        if isinstance(value, bool):
            raise fail("int")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise fail("int")
    if tp is float:
        if isinstance(value, bool):
            raise fail("float")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise fail("float")
    if tp is str:
        if isinstance(value, str):
            return value
        if raw is not None:
            return raw.strip()
        raise fail("str")
    if origin in (tuple, list) or tp in (tuple, list):
        container = tuple if (origin or tp) is tuple else list
        if isinstance(value, (list, tuple)):
            items, raws = list(value), [None] * len(value)
        elif isinstance(value, str):
            raws = _split_sequence(value)
            items = [parse_value(r) for r in raws]
        elif isinstance(value, dict) or value is None:
            raise fail(_type_name(tp))
        else:  # a scalar for a variable-length sequence: one element
            items, raws = [value], [raw]
        if not args:
            return container(items)
        if container is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                raise ValueError(f"{where}: expected {len(args)} elements for {_type_name(tp)}, got {len(items)}")
            elem_types = list(args)
        else:
            elem_types = [args[0]] * len(items)
        return container(coerce_value(v, t, f"{where}[{i}]", r)
                         for i, (v, t, r) in enumerate(zip(items, elem_types, raws)))
    if origin is dict or tp is dict:
        if isinstance(value, dict):
            return dict(value)
        raise fail("dict")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return _from_dict(tp, value, where)
        raise fail(f"{tp.__name__} (a dict of its fields)")
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise fail(tp.__name__)
    return value  # unknown annotation form: accept as is


# ====================================================================== overrides
def _paths(obj: Any, prefix: str = "") -> list[str]:
    """All dotted field paths (sections and leaves) of a dataclass tree."""
    out = []
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        path = f"{prefix}{f.name}"
        out.append(path)
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.extend(_paths(value, path + "."))
    return out


def _suggest(name: str, candidates: Sequence[str], cutoff: float, substrings: bool = True) -> list[str]:
    """Close spellings of ``name``, plus (``substrings``) candidates containing it or contained in it."""
    out = difflib.get_close_matches(name, candidates, n=3, cutoff=cutoff)
    if substrings and len(name) >= 3:
        out += [c for c in candidates if (name in c or (len(c) >= 3 and c in name)) and c not in out]
    return out


def _unknown_key_error(root: Any, key: str, prefix: str, missing: str, owner: Any) -> ValueError:
    """ValueError for ``key``, suggesting siblings of ``missing`` first, then fields anywhere in the tree."""
    siblings = [f.name for f in dataclasses.fields(owner) if f.init]
    close = [prefix + s for s in _suggest(missing, siblings, 0.6)]
    paths = _paths(root)
    leaves = sorted({p.rsplit(".", 1)[-1] for p in paths})
    near = set(_suggest(missing, leaves, 0.8, substrings=not close))  # loose only if no sibling fits
    close += [p for p in paths if p.rsplit(".", 1)[-1] in near and p not in close]
    hint = f"; did you mean: {', '.join(close[:6])}?" if close else ""
    return ValueError(f"unknown config key {key!r} ({type(owner).__name__} has no field {missing!r}){hint}")


def _set_path(root: Any, obj: Any, parts: list[str], value: Any, raw: Optional[str], key: str,
              prefix: str = "") -> Any:
    name, rest = parts[0], parts[1:]
    fields = {f.name for f in dataclasses.fields(obj) if f.init}
    if name not in fields:
        raise _unknown_key_error(root, key, prefix, name, obj)
    tp = _field_types(type(obj)).get(name, Any)
    if rest:
        current = getattr(obj, name)
        if current is None:
            dc = _optional_dataclass(tp)
            if dc is None:
                raise ValueError(f"cannot set {key!r}: {prefix + name!r} is None and is not a config section")
            current = dc()  # Optional section unset so far: start from its defaults
        if not (dataclasses.is_dataclass(current) and not isinstance(current, type)):
            raise ValueError(f"cannot set {key!r}: {prefix + name!r} is a {type(current).__name__}, "
                             f"not a config section")
        new = _set_path(root, current, rest, value, raw, key, prefix + name + ".")
    else:
        new = coerce_value(value, tp, key, raw)
    try:
        return dataclasses.replace(obj, **{name: new})
    except (ValueError, TypeError) as e:  # a section's __post_init__ check: name the key
        raise ValueError(str(e) if key in str(e) else f"{key}: {e}") from None


def apply_overrides(cfg: Any, overrides: Sequence[str] | Mapping[str, Any], validate: bool = True) -> Any:
    """Return ``cfg`` (any frozen dataclass tree) with ``"a.b=value"`` overrides applied in order.

    Values are parsed with ``ast.literal_eval`` (else kept as strings) and coerced to the field's
    annotation; ``None``/``null`` sets an Optional field to None; a tuple accepts ``(3,4)``,
    ``3,4`` or ``[3, 4]``; setting a field below an unset Optional section starts from that
    section's defaults.  A mapping ``{"a.b": python_value}`` skips the parsing step.  With
    ``validate`` the result's ``validate()`` runs (when it exists) so inconsistent values fail here.
    """
    if not (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)):
        raise TypeError(f"apply_overrides needs a dataclass instance, got {type(cfg).__name__}")
    if isinstance(overrides, Mapping):
        items = [(str(k), v, None) for k, v in overrides.items()]
    else:
        items = []
        for text in overrides:
            if not isinstance(text, str) or "=" not in text:
                raise ValueError(f"override {text!r} must look like key.path=value")
            key, _, raw = text.partition("=")
            items.append((key, parse_value(raw), raw))
    for key, value, raw in items:
        key = key.strip()
        parts = key.split(".")
        if not key or any(not p for p in parts):
            raise ValueError(f"bad override key {key!r}")
        cfg = _set_path(cfg, cfg, parts, value, raw, key)
    if validate and callable(getattr(cfg, "validate", None)):
        cfg.validate()
    return cfg


# ====================================================================== (de)serialisation
def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict of a dataclass tree (tuples stay tuples; ``config_to_json`` makes lists)."""
    return dataclasses.asdict(cfg)


def config_to_json(cfg: Any) -> str:
    return json.dumps(config_to_dict(cfg), indent=2, sort_keys=True)


def _from_dict(cls: type, d: Mapping[str, Any], where: str = "",
               classes: Optional[Mapping[str, type]] = None) -> Any:
    if not isinstance(d, Mapping):
        raise ValueError(f"{where or cls.__name__}: expected a dict for {cls.__name__}, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        close = {u: difflib.get_close_matches(u, list(fields), n=1) for u in unknown}
        hints = ", ".join(f"{u!r}" + (f" (did you mean {c[0]!r}?)" if c else "") for u, c in close.items())
        raise ValueError(f"unknown {cls.__name__} fields{' in ' + where if where else ''}: {hints}")
    hints_ = _field_types(cls)
    kwargs = {}
    for name, value in d.items():
        path = f"{where}.{name}" if where else name
        tp = hints_.get(name, Any)
        if tp is Any and isinstance(value, Mapping):
            section_cls = (classes or {}).get(path)
            if section_cls is None and not where and name in LAZY_CONFIG_CLASSES:
                section_cls = resolve_config_class(name)
            if section_cls is not None:
                kwargs[name] = _from_dict(section_cls, value, path, classes)
                continue
        if _optional_dataclass(tp) is not None and isinstance(value, Mapping):
            kwargs[name] = _from_dict(_optional_dataclass(tp), value, path, classes)
        else:
            kwargs[name] = coerce_value(value, tp, path)
    return cls(**kwargs)


def config_from_dict(d: Mapping[str, Any], cls: type = TrainConfig,
                     classes: Optional[Mapping[str, type]] = None) -> Any:
    """Inverse of ``config_to_dict`` (also accepts ``json.loads(config_to_json(cfg))``).

    ``classes`` maps dotted paths of ``Any``-typed sections to their class (default for TrainConfig:
    ``LAZY_CONFIG_CLASSES``, imported on demand).  Unknown keys raise ValueError.
    """
    return _from_dict(cls, d, "", classes)


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
    "load_config", "parse_value", "coerce_value", "apply_overrides",
    "config_to_dict", "config_to_json", "config_from_dict", "config_from_json",
    "MODEL_SHAPE_FIELDS", "ENTROPY_SHAPE_FIELDS", "model_shape_diff",
]
