"""TrainConfig schema, overrides, loading, JSON round trip and resume-shape checks."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import textwrap
from typing import Literal

import pytest

from bltjax.config import BLTConfig, PatcherConfig, TransformerConfig, tiny_blt_config
from bltjax.train_config import (
    CheckpointConfig,
    OptimConfig,
    TrainConfig,
    apply_overrides,
    coerce_value,
    config_from_dict,
    config_from_json,
    config_to_dict,
    config_to_json,
    load_config,
    model_shape_diff,
    split_config_arg,
)


# Stand-ins for bltjax.data.DataConfig / bltjax.sharding.MeshConfig (owned by other modules) so these
# tests exercise only this module's logic.
@dataclasses.dataclass(frozen=True, kw_only=True)
class FakeData:
    source: str = "embedded"
    val_fraction: float = 0.1
    paths: tuple[str, ...] = ()
    mode: Literal["a", "b"] = "a"

    def validate(self) -> FakeData:
        if not 0 <= self.val_fraction < 1:
            raise ValueError("data.val_fraction out of range")
        return self


@dataclasses.dataclass(frozen=True, kw_only=True)
class FakeMesh:
    ici_fsdp: int = -1
    ici_data: int = 1


CLASSES = {"data": FakeData, "mesh": FakeMesh}


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(model=tiny_blt_config(), data=FakeData(), mesh=FakeMesh(), seq_len=64,
                global_batch_size=8, steps=100, optim=OptimConfig(warmup_steps=10), log_every=5)
    base.update(kw)
    return TrainConfig(**base).validate()


# ---------------------------------------------------------------------- overrides
def test_nested_overrides_and_types():
    cfg = apply_overrides(tiny_cfg(), [
        "optim.lr=1e-3", "optim.warmup_steps=20", "steps=200", "model.dim_global=128",
        "model.patcher.patch_size=3", "tensorboard=false", "name=run7", "optim.schedule=linear",
        "workdir=/tmp/x y", "data.val_fraction=0.25", "mesh.ici_fsdp=2",
    ])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.warmup_steps == 20 and isinstance(cfg.optim.warmup_steps, int)
    assert cfg.steps == 200
    assert cfg.model.dim_global == 128
    assert cfg.model.patcher.patch_size == 3.0 and isinstance(cfg.model.patcher.patch_size, float)
    assert cfg.tensorboard is False
    assert cfg.name == "run7"
    assert cfg.optim.schedule == "linear"
    assert cfg.workdir == "/tmp/x y"
    assert cfg.data.val_fraction == 0.25 and cfg.mesh.ici_fsdp == 2
    # untouched siblings survive
    assert cfg.optim.b2 == 0.95 and cfg.model.dim_local_encoder == 32


@pytest.mark.parametrize("text,expected", [
    ("true", True), ("True", True), ("false", False), ("FALSE", False), ("1", True), ("0", False),
    ("yes", True), ("off", False),
])
def test_bool_spellings(text, expected):
    assert apply_overrides(tiny_cfg(), [f"tensorboard={text}"]).tensorboard is expected


def test_int_accepts_integral_float_and_str_field_keeps_text():
    cfg = apply_overrides(tiny_cfg(), ["steps=1e3", "name=123", "seed=7"])
    assert cfg.steps == 1000 and isinstance(cfg.steps, int)
    assert cfg.name == "123"
    with pytest.raises(ValueError, match="steps"):
        apply_overrides(tiny_cfg(), ["steps=1.5"])


def test_optional_fields():
    cfg = apply_overrides(tiny_cfg(), ["optim.clip=None", "checkpoint.keep_every=null"])
    assert cfg.optim.clip is None and cfg.checkpoint.keep_every is None
    cfg = apply_overrides(cfg, ["optim.clip=2", "model.n_kv_heads=1"])
    assert cfg.optim.clip == 2.0 and isinstance(cfg.optim.clip, float)
    assert cfg.model.n_kv_heads == 1
    with pytest.raises(ValueError, match="steps"):
        apply_overrides(cfg, ["steps=None"])  # not Optional


def test_optional_nested_section_starts_from_defaults():
    cfg = tiny_cfg()
    assert cfg.model.entropy_model is None
    cfg2 = apply_overrides(cfg, ["model.entropy_model.dim=64", "model.entropy_model.n_heads=2"])
    assert cfg2.model.entropy_model == TransformerConfig(dim=64, n_heads=2)
    cfg3 = apply_overrides(cfg2, ["model.entropy_model=None"])
    assert cfg3.model.entropy_model is None


def test_tuple_fields_all_spellings():
    for text in ("(3, 4, 5)", "[3,4,5]", "3,4,5"):
        cfg = apply_overrides(tiny_cfg(), [f"model.encoder_hash_byte_group_size={text}"])
        assert cfg.model.encoder_hash_byte_group_size == (3, 4, 5)
    cfg = apply_overrides(tiny_cfg(), ["model.encoder_hash_byte_group_size=4"])
    assert cfg.model.encoder_hash_byte_group_size == (4,)
    cfg = apply_overrides(tiny_cfg(), ["data.paths=a.txt,b.txt"])
    assert cfg.data.paths == ("a.txt", "b.txt")
    with pytest.raises(ValueError, match=r"encoder_hash_byte_group_size\[1\]"):
        apply_overrides(tiny_cfg(), ["model.encoder_hash_byte_group_size=(3, 'x')"])
    assert coerce_value([1, "a"], tuple[int, str]) == (1, "a")
    with pytest.raises(ValueError, match="expected 2 elements"):
        coerce_value([1], tuple[int, str])


def test_literal_choices():
    cfg = apply_overrides(tiny_cfg(), ["model.remat=full", "precision=float32", "model.patcher.mode=space"])
    assert cfg.model.remat == "full" and cfg.precision == "float32" and cfg.model.patcher.mode == "space"
    with pytest.raises(ValueError, match=r"not one of .*did you mean 'cosine'"):
        apply_overrides(tiny_cfg(), ["optim.schedule=cosin"])
    with pytest.raises(ValueError, match="precision"):
        apply_overrides(tiny_cfg(), ["precision=fp16"])


def test_unknown_key_suggests_close_matches():
    with pytest.raises(ValueError, match=r"unknown config key 'optim.lrr'.*did you mean: optim.lr"):
        apply_overrides(tiny_cfg(), ["optim.lrr=1e-3"])
    with pytest.raises(ValueError, match=r"did you mean:.*optim.lr"):
        apply_overrides(tiny_cfg(), ["lr=1e-3"])  # leaf name without its section
    with pytest.raises(ValueError, match=r"model.dim_global"):
        apply_overrides(tiny_cfg(), ["model.dim_globl=128"])
    with pytest.raises(ValueError, match="not a config section"):
        apply_overrides(tiny_cfg(), ["steps.x=1"])


def test_wrong_types_and_bad_syntax():
    with pytest.raises(ValueError, match=r"optim.lr: expected float, got str abc"):
        apply_overrides(tiny_cfg(), ["optim.lr=abc"])
    with pytest.raises(ValueError, match="expected int"):
        apply_overrides(tiny_cfg(), ["seq_len=true"])
    with pytest.raises(ValueError, match="expected bool"):
        apply_overrides(tiny_cfg(), ["tensorboard=maybe"])
    with pytest.raises(ValueError, match="key.path=value"):
        apply_overrides(tiny_cfg(), ["optim.lr"])


@pytest.mark.parametrize("override,match", [
    ("global_batch_size=6", "divisible by optim.grad_accum_steps"),
    ("optim.warmup_steps=100", r"warmup_steps \(100\) must be < steps \(100\)"),
    ("seq_len=100000", "max_encoder_seq_length"),
    ("checkpoint.keep_every=1500", "multiple of checkpoint.every"),
    ("model.dim_global=65", "divisible by its head count"),
    ("data.val_fraction=2.0", "val_fraction"),
    ("model.patcher.mode=entropy", "entropy_model_checkpoint"),
    ("entropy_model_checkpoint=/ckpt", "only used with model.patcher.mode='entropy'"),
    ("train_entropy_model=true", "needs model.entropy_model"),
    ("model.param_dtype=bfloat16", "fp32 master weights"),
    ("optim.lr_min_ratio=1.5", "lr_min_ratio"),
])
def test_inconsistent_values_error_on_validate(override, match):
    cfg = tiny_cfg(optim=OptimConfig(warmup_steps=10, grad_accum_steps=4))
    with pytest.raises(ValueError, match=match):
        apply_overrides(cfg, [override])
    apply_overrides(cfg, [override], validate=False)  # the override itself is well-typed


def test_overrides_combined_become_consistent():
    cfg = apply_overrides(tiny_cfg(), ["model.patcher.mode=entropy", "entropy_model_checkpoint=/ckpt/em"])
    assert cfg.model.patcher.mode == "entropy"
    cfg = apply_overrides(tiny_cfg(), ["train_entropy_model=true", "model.entropy_model.dim=32",
                                       "model.entropy_model.n_heads=2", "model.entropy_model.max_seqlen=64"])
    assert cfg.model.entropy_model.dim == 32


def test_generic_on_bltconfig_and_mapping_form():
    m = apply_overrides(tiny_blt_config(), ["dim_global=256", "patcher.max_patches=40"])
    assert isinstance(m, BLTConfig) and m.dim_global == 256 and m.patcher.max_patches == 40
    m = apply_overrides(tiny_blt_config(), {"cross_attn_k": 4, "patcher": {"mode": "space"}})
    assert m.cross_attn_k == 4 and m.patcher == PatcherConfig(mode="space")
    with pytest.raises(ValueError, match="divisible"):
        apply_overrides(tiny_blt_config(), ["dim_global=65"])


def test_resolved_model_uses_precision():
    cfg = tiny_cfg(precision="bfloat16")
    assert cfg.resolved_model().dtype == "bfloat16" and cfg.resolved_model().param_dtype == "float32"
    assert cfg.micro_batch_size == 8 and cfg.bytes_per_step == 8 * 64


# ---------------------------------------------------------------------- load_config
def test_load_config(tmp_path):
    path = tmp_path / "exp.py"
    path.write_text(textwrap.dedent('''
        """Experiment: python -m bltjax.train --config exp.py"""
        import dataclasses
        from bltjax.config import tiny_blt_config
        from bltjax.train_config import TrainConfig, OptimConfig

        @dataclasses.dataclass(frozen=True, kw_only=True)
        class Data:
            source: str = "embedded"

        def get_config():
            return TrainConfig(name="exp", model=tiny_blt_config(), data=Data(), mesh=Data(),
                               seq_len=64, global_batch_size=4, steps=50,
                               optim=OptimConfig(warmup_steps=5))
    '''))
    cfg = load_config(path)
    assert cfg.name == "exp" and cfg.steps == 50 and cfg.model.dim_global == 64
    cfg = apply_overrides(cfg, ["data.source=tfds", "steps=60"])
    assert cfg.data.source == "tfds" and cfg.steps == 60


def test_load_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "nope.py")
    bad = tmp_path / "bad.py"
    bad.write_text("X = 1\n")
    with pytest.raises(ValueError, match="get_config"):
        load_config(bad)
    wrong = tmp_path / "wrong.py"
    wrong.write_text("def get_config():\n    return 3\n")
    with pytest.raises(TypeError, match="expected TrainConfig"):
        load_config(wrong)


def test_repo_experiments_load():
    """Every experiments/*.py in the repo imports and its get_config() returns a TrainConfig."""
    import pathlib

    for path in sorted((pathlib.Path(__file__).parent.parent / "experiments").glob("*.py")):
        if path.name.startswith("_"):
            continue
        assert isinstance(load_config(path), TrainConfig), path
    for size in ("400m", "1b", "2b", "4b", "8b"):  # the paper sizes: FILE.py:ARG calls get_config(ARG)
        cfg = load_config(f"{pathlib.Path(__file__).parent.parent / 'experiments' / 'blt_paper.py'}:{size}")
        assert cfg.name == f"blt_{size}" and cfg.validate() is cfg
    with pytest.raises(ValueError, match="unknown paper size '3b'"):
        load_config(f"{pathlib.Path(__file__).parent.parent / 'experiments' / 'blt_paper.py'}:3b")


# ---------------------------------------------------------------------- serialisation
def test_round_trip_exact():
    cfg = apply_overrides(tiny_cfg(), ["model.entropy_model.dim=64", "model.entropy_model.n_heads=2",
                                       "data.paths=(x,y)", "optim.clip=None", "checkpoint.keep_every=2000",
                                       "optim.weight_decay_exclude=(norm,embed)"])
    d = config_to_dict(cfg)
    assert config_from_dict(d, classes=CLASSES) == cfg
    text = config_to_json(cfg)
    back = config_from_json(text, classes=CLASSES)
    assert back == cfg
    assert back.model.encoder_hash_byte_group_size == cfg.model.encoder_hash_byte_group_size
    assert isinstance(back.data.paths, tuple) and isinstance(back.model.entropy_model, TransformerConfig)
    assert json.loads(config_to_json(back)) == json.loads(text)


def test_from_dict_rejects_unknown_fields():
    d = config_to_dict(tiny_cfg())
    d["optim"]["lrr"] = 1.0
    with pytest.raises(ValueError, match=r"'lrr' \(did you mean 'lr'\?\)"):
        config_from_dict(d, classes=CLASSES)


def test_real_data_and_mesh_defaults_round_trip():
    """With the real bltjax.data / bltjax.sharding modules the lazy defaults and from_dict work."""
    cfg = TrainConfig(model=tiny_blt_config(), seq_len=64, global_batch_size=8, steps=100,
                      optim=OptimConfig(warmup_steps=10))
    assert config_from_json(config_to_json(cfg)) == cfg
    cfg2 = apply_overrides(cfg, ["mesh.ici_fsdp=2"], validate=False)
    assert cfg2.mesh.ici_fsdp == 2


# ---------------------------------------------------------------------- model_shape_diff
def test_model_shape_diff():
    a = config_to_dict(tiny_cfg())
    assert model_shape_diff(a, a) == []
    b = config_to_dict(apply_overrides(tiny_cfg(), [
        "model.dtype=bfloat16", "model.remat=full", "model.attention_impl=xla", "precision=float32",
        "model.rope_theta=10000.0", "optim.lr=1e-3"]))
    assert model_shape_diff(a, b) == []  # no shape change
    c = config_to_dict(apply_overrides(tiny_cfg(), [
        "model.dim_global=128", "model.encoder_hash_byte_group_vocab=50", "model.cross_attn_k=4",
        "model.encoder_hash_byte_group_size=(3,4)"]))
    diff = model_shape_diff(a, c)
    assert [d.split(":")[0] for d in diff] == [
        "dim_global", "cross_attn_k", "encoder_hash_byte_group_size", "encoder_hash_byte_group_vocab"]
    assert "dim_global: 64 -> 128" in diff
    # JSON lists vs tuples compare equal; plain model dicts accepted; missing field = default
    j = json.loads(config_to_json(tiny_cfg()))
    assert model_shape_diff(a, j) == []
    m_old = dict(a["model"])
    del m_old["scan_layers"]
    assert model_shape_diff(m_old, a["model"]) == []
    e = config_to_dict(apply_overrides(tiny_cfg(), ["model.entropy_model.dim=64", "model.entropy_model.n_heads=2"]))
    assert model_shape_diff(a, e) == ["entropy_model: None -> set"]
    e2 = config_to_dict(apply_overrides(tiny_cfg(), ["model.entropy_model.dim=128", "model.entropy_model.n_heads=2"]))
    assert model_shape_diff(e, e2) == ["entropy_model.dim: 64 -> 128"]


def test_section_defaults_are_paper_values():
    o = OptimConfig()
    assert (o.lr, o.b1, o.b2, o.eps, o.weight_decay, o.warmup_steps, o.schedule, o.lr_min_ratio, o.clip) == (
        4e-4, 0.9, 0.95, 1e-8, 0.1, 2000, "cosine", 0.1, 1.0)
    c = CheckpointConfig()
    assert c.keep_latest == 3 and c.keep_every is None and c.async_save is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.lr = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        OptimConfig(4e-4)  # type: ignore[misc]  # kw_only


def test_config_argument_syntax():
    """``--config FILE.py:ARG`` and the bare-name form ``NAME:ARG`` reach ``get_config(ARG)``."""
    from bltjax import train

    assert split_config_arg("experiments/blt_paper.py:1b") == (pathlib.Path("experiments/blt_paper.py"), "1b")
    assert split_config_arg("runs/x.py") == (pathlib.Path("runs/x.py"), None)
    path = train.config_path("blt_paper:400m")
    assert path.endswith("blt_paper.py:400m")
    assert load_config(path).name == "blt_400m"
