"""``--set key.path=value`` overrides on trees of frozen dataclasses, with typed checks.

``apply_overrides`` walks a dotted path down any tree of frozen dataclasses, parses the value with
``ast.literal_eval`` (falling back to the raw string) and coerces it to the field's annotation
(int, float, bool, str, Optional[...], tuple[...], Literal[...], nested dataclasses); an unknown key
fails with "did you mean" suggestions (siblings first, then fields anywhere in the tree).
``coerce_value`` is also what ``train_config.config_from_dict`` uses to read a stored config back.

Why not a library: big_vision's overrides come from ml_collections through absl flags
(``--config.a.b=v``, built around ``ConfigDict``); Levanter's draccus (a pyrallis fork) turns every
dataclass field into an argparse flag.  Either would replace the trainer's ``--set key=value``
syntax and the errors users see for a mistyped key (here: the closest valid keys, siblings first)
and would add a dependency for ~300 lines that keep the config classes plain frozen dataclasses and
check every value against its annotation and ``Literal`` choices before any compute.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Optional, Union

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null"}


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
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


def optional_dataclass(tp: Any) -> Optional[type]:
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


class _Mismatch:
    """Builds the ValueError for a value that does not fit its annotation."""

    def __init__(self, value: Any, where: str, shown: str):
        self.value, self.where, self.shown = value, where, shown

    def __call__(self, expected: str) -> ValueError:
        return ValueError(f"{self.where}: expected {expected}, got {type(self.value).__name__} {self.shown}")


def _coerce_union(value: Any, tp: Any, args: tuple, where: str, raw: Optional[str], fail: _Mismatch) -> Any:
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
    raise ValueError(f"{where}: {fail.shown} does not match {_type_name(tp)} ({'; '.join(errors)})")


def _coerce_literal(value: Any, args: tuple, where: str, raw: Optional[str], fail: _Mismatch) -> Any:
    for choice in args:
        if value == choice and type(value) is type(choice):
            return choice
    text = raw if raw is not None else (value if isinstance(value, str) else None)
    if text is not None and text in args:
        return text
    close = difflib.get_close_matches(str(value), [str(a) for a in args], n=3)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"{where}: {fail.shown} is not one of {list(args)}{hint}")


def _coerce_scalar(value: Any, tp: type, raw: Optional[str], fail: _Mismatch) -> Any:
    """bool / int / float / str."""
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
    if isinstance(value, str):
        return value
    if raw is not None:
        return raw.strip()
    raise fail("str")


def _coerce_sequence(value: Any, tp: Any, origin: Any, args: tuple, where: str, raw: Optional[str],
                     fail: _Mismatch) -> Any:
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


def coerce_value(value: Any, tp: Any, where: str = "value", raw: Optional[str] = None) -> Any:
    """Return ``value`` converted to annotation ``tp`` or raise ValueError naming ``where``.

    ``raw`` is the original command-line text, used when a ``str`` field received something that
    ``literal_eval`` turned into a number (``name=123`` -> ``"123"``).
    """
    if tp is Any or tp is object:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    fail = _Mismatch(value, where, raw if raw is not None else repr(value))
    if origin in (Union, types.UnionType):
        return _coerce_union(value, tp, args, where, raw, fail)
    if origin is Literal:
        return _coerce_literal(value, args, where, raw, fail)
    if tp in (bool, int, float, str):
        return _coerce_scalar(value, tp, raw, fail)
    if origin in (tuple, list) or tp in (tuple, list):
        return _coerce_sequence(value, tp, origin, args, where, raw, fail)
    if origin is dict or tp is dict:
        if isinstance(value, dict):
            return dict(value)
        raise fail("dict")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return from_dict(tp, value, where)
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
    tp = field_types(type(obj)).get(name, Any)
    if rest:
        current = getattr(obj, name)
        if current is None:
            dc = optional_dataclass(tp)
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


def from_dict(cls: type, d: Mapping[str, Any], where: str = "", classes: Optional[Mapping[str, type]] = None,
              resolve_section: Optional[Callable[[str], Optional[type]]] = None) -> Any:
    """A ``cls`` instance from a nested dict, every value coerced to its field's annotation.

    ``classes`` maps dotted paths of ``Any``-typed sections to their class; ``resolve_section(name)``
    gives the class of an ``Any``-typed top-level section (or None).  Unknown keys raise ValueError.
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"{where or cls.__name__}: expected a dict for {cls.__name__}, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        close = {u: difflib.get_close_matches(u, list(fields), n=1) for u in unknown}
        hints = ", ".join(f"{u!r}" + (f" (did you mean {c[0]!r}?)" if c else "") for u, c in close.items())
        raise ValueError(f"unknown {cls.__name__} fields{' in ' + where if where else ''}: {hints}")
    hints_ = field_types(cls)
    kwargs = {}
    for name, value in d.items():
        path = f"{where}.{name}" if where else name
        tp = hints_.get(name, Any)
        if tp is Any and isinstance(value, Mapping):
            section_cls = (classes or {}).get(path)
            if section_cls is None and not where and resolve_section is not None:
                section_cls = resolve_section(name)
            if section_cls is not None:
                kwargs[name] = from_dict(section_cls, value, path, classes)
                continue
        if optional_dataclass(tp) is not None and isinstance(value, Mapping):
            kwargs[name] = from_dict(optional_dataclass(tp), value, path, classes)
        else:
            kwargs[name] = coerce_value(value, tp, path)
    return cls(**kwargs)



__all__ = ["parse_value", "coerce_value", "apply_overrides", "from_dict", "field_types", "optional_dataclass"]
