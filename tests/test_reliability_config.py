"""Every numeric config field is range-checked before any derived size, and the error names the key.

The walk below finds the integer fields of the whole TrainConfig tree by their annotations, so a new
field is covered without a new test; the few fields where 0 or -1 is meaningful are listed here.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

import pytest
from helpers.subprocess_env import REPO, env_with_devices

from bltjax.config import TransformerConfig
from bltjax.train_config import TrainConfig, apply_overrides, load_config

# value -> fields where that value is legal (everything else must be refused for 0 and -1)
LEGAL = {
    0: {"seed", "eval_every", "eval_batches", "optim.warmup_steps", "data.seed", "data.worker_count",
        "data.read_threads", "data.prefetch_batches", "model.eos_id", "model.entropy_model.eos_id"},
    -1: {"seed"} | {f"mesh.{g}_{a}" for g in ("ici", "dcn") for a in ("data", "fsdp", "tensor")},
}


def base_config() -> TrainConfig:
    cfg = load_config(REPO / "experiments" / "default.py")
    em = TransformerConfig(dim=32, n_layers=1, n_heads=2, multiple_of=32, max_seqlen=256, sliding_window=64)
    # every Optional size set, so that its range is exercised too
    cfg = apply_overrides(cfg, {
        "model.entropy_model": em, "model.n_kv_heads": 2, "model.n_kv_heads_global": 2,
        "model.cross_attn_window_encoder": 8, "model.cross_attn_window_decoder": 8,
        "model.patcher.max_patch_length": 8, "model.patcher.entropy_chunk_len": 64,
        "model.entropy_model.n_kv_heads": 2, "model.entropy_model.head_dim": 16,
        "checkpoint.keep_every": 200, "model.patcher.max_patches": 65})
    return cfg.validate()


def _int_like(tp) -> str | None:
    """'int' for int / Optional[int], 'tuple' for tuple[int, ...]; None otherwise."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if tp is int or (typing.get_origin(tp) in (typing.Union, __import__("types").UnionType)
                     and args == [int]):
        return "int"
    if typing.get_origin(tp) is tuple and args and args[0] is int:
        return "tuple"
    return None


def int_fields(obj, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), prefix + f.name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out += int_fields(value, key + ".")
        elif (kind := _int_like(hints.get(f.name))) is not None:
            out.append((key, kind))
    return out


def test_walk_finds_the_size_fields():
    keys = {k for k, _ in int_fields(base_config())}
    # sections of every owner module are walked, Optional ones included
    for k in ("model.dim_global", "model.patcher.max_patches", "model.entropy_model.n_heads", "optim.grad_accum_steps",
              "checkpoint.every", "data.worker_buffer_size", "mesh.ici_fsdp", "seq_len", "steps"):
        assert k in keys, k
    assert len(keys) > 50


@pytest.mark.parametrize("value", [0, -1])
def test_every_int_field_refuses_zero_and_negative_naming_the_key(value):
    cfg = base_config()
    accepted, unnamed = [], []
    for key, kind in int_fields(cfg):
        v = (value,) if kind == "tuple" else value
        try:
            apply_overrides(cfg, {key: v})
        except ValueError as e:
            if key not in str(e):
                unnamed.append(f"{key}: {e}")
        except Exception as e:  # noqa: BLE001 -- anything else is a crash: report it
            unnamed.append(f"{key}: {type(e).__name__}: {e}")
        else:
            if key not in LEGAL[value]:
                accepted.append(key)
    assert not accepted, f"accepted {value}: {accepted}"
    assert not unnamed, "\n".join(unnamed)


def test_float_fields_must_be_finite_and_positive_where_sizes():
    cfg = base_config()
    for key, bad in [("model.norm_eps", 0.0), ("model.patcher.patch_size", -4.0), ("optim.lr", float("nan")),
                     ("model.rope_theta", float("inf")), ("model.entropy_model.norm_eps", -1e-5),
                     ("data.val_fraction", float("nan"))]:
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            apply_overrides(cfg, {key: bad})


@pytest.mark.parametrize("overrides", [
    ["model.dim_global=-8"],
    ["model.n_heads_global=0"],
    ["model.dim_local_encoder=-8", "model.dim_local_decoder=-8"],
])
def test_cli_refuses_bad_size_with_one_line_and_no_workdir(tmp_path, overrides):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "bltjax.train", "--workdir", str(workdir)]
    for o in overrides:
        cmd += ["--set", o]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env_with_devices(1), timeout=120, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert overrides[0].split("=")[0] in lines[0]
    assert not workdir.exists()
