"""The trainer end to end on tiny shapes: learning, checkpoints, entropy models, bad input, NaN stop.

Runs ``bltjax.train.main`` in this process (8 fake CPU devices from conftest) with the tiny experiment
``tests/helpers/train_child_tiny.py``; resume/kill tests live in test_train_resume.py, multi-device and
multi-process equivalence in test_train_distributed.py.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import pathlib
import signal

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bltjax import patcher, pretrained, train, train_step
from bltjax.metrics import read_jsonl
from bltjax.model import entropy_model
from bltjax.train_config import TrainConfig, config_from_dict, load_config
from bltjax.workdir import load_run

REPO = pathlib.Path(__file__).parent.parent
TINY = str(REPO / "tests" / "helpers" / "train_child_tiny.py")
MESH_8 = ["--set", "mesh.ici_data=1", "--set", "mesh.ici_fsdp=8", "--set", "mesh.ici_tensor=1"]
TINY_ENTROPY_MODEL = [
    "--set", "model.entropy_model.dim=32", "--set", "model.entropy_model.n_layers=2",
    "--set", "model.entropy_model.n_heads=2", "--set", "model.entropy_model.max_seqlen=64",
    "--set", "model.entropy_model.sliding_window=32", "--set", "model.entropy_model.multiple_of=32",
]


@pytest.fixture(autouse=True)
def _keep_sigterm_handler():
    """main() installs a SIGTERM handler; put the test process's back afterwards."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def sets(**kv) -> list[str]:
    out = []
    for k, v in kv.items():
        out += ["--set", f"{k.replace('__', '.')}={v}"]
    return out


def snapshot(directory: pathlib.Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its content (to prove nothing was written)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


TRACES: dict[str, int] = {}  # traces of the train and eval step during learned_run


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
    """16 steps of the tiny BLT (fsdp over 8 devices) with an eval every 8 steps and TensorBoard.

    The train and eval step functions are wrapped with a trace counter (``chex.assert_max_traces``):
    16 steps and 2 evaluations must trace each exactly once."""
    workdir = tmp_path_factory.mktemp("learn") / "run"
    TRACES.update(train_step=0, eval_step=0)

    def counted(name):
        capped = chex.assert_max_traces(getattr(train_step, name), n=1)  # raises on a second trace

        def wrapper(*args, **kwargs):
            TRACES[name] += 1
            return capped(*args, **kwargs)
        return wrapper

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_step, "train_step", counted("train_step"))
        mp.setattr(train_step, "eval_step", counted("eval_step"))
        try:
            code = train.main(["--config", TINY, "--workdir", str(workdir), *MESH_8,
                               *sets(steps=16, eval_every=8, eval_batches=2, tensorboard=True, checkpoint__every=8)])
        finally:
            chex.clear_trace_counter()
    assert code == 0
    return workdir


# ====================================================================== learning and artefacts
def test_tiny_run_learns_logs_and_checkpoints(learned_run):
    records = read_jsonl(learned_run / "metrics.jsonl")
    train_recs = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_recs] == list(range(1, 17))
    losses = np.array([r["loss"] for r in train_recs])
    assert np.all(np.isfinite(losses))
    assert losses[-3:].mean() < losses[:2].mean() - 0.8, losses  # ~6.0 -> ~4.6 on this corpus
    first = train_recs[0]
    for key in ("bpb", "ce", "grad_norm", "param_norm", "lr", "avg_patch_size", "overflow_frac", "flops_per_byte"):
        assert key in first, key
    assert first["bpb"] == pytest.approx(first["ce"] / math.log(2), rel=1e-6)
    assert first["lr"] == 0.0 and train_recs[2]["lr"] > 0  # warm-up from 0
    # static patches [1, 4, 4, ...]: 65 positions in 17 patches per row, never overflowing
    assert first["avg_patch_size"] == pytest.approx(65 / 17) and first["overflow_frac"] == 0.0
    assert any("bytes_per_s" in r and "mfu" in r for r in train_recs)
    assert all(0 < r["mfu"] <= 1 for r in train_recs if "mfu" in r)  # a fraction of the host's real peak
    evals = {r["step"]: r for r in records if "val_bpb" in r}
    assert sorted(evals) == [8, 16]
    assert evals[16]["val_bpb"] < evals[8]["val_bpb"] < 8.5
    assert evals[16]["val_avg_patch_size"] == pytest.approx(65 / 17) and evals[16]["val_overflow_frac"] == 0.0
    assert (learned_run / "tensorboard").is_dir()
    cfg = json.loads((learned_run / "config.json").read_text())
    assert cfg["steps"] == 16 and cfg["mesh"]["ici_fsdp"] == 8
    assert sorted(int(p.name) for p in (learned_run / "checkpoints").iterdir() if p.name.isdigit()) == [8, 16]


def test_train_and_eval_steps_trace_once(learned_run):
    assert TRACES == {"train_step": 1, "eval_step": 1}  # 16 steps, 2 evaluations: no retrace per step


def test_eval_without_data_reads_the_runs_validation_split(learned_run, tmp_path, capsys):
    """``python -m bltjax.eval --checkpoint RUN`` (no --data): the trainer's validation split, in windows of
    the run's seq_len; on the windows the trainer evaluates (2 batches of 8 x 64) it agrees with val_bpb."""
    from bltjax import eval as ev
    from bltjax.data import pipeline

    cfg = config_from_dict(json.loads((learned_run / "config.json").read_text()))
    _, index = pipeline.stream_index(cfg.data, "validation")
    out = tmp_path / "all.json"
    assert ev.main(["--checkpoint", str(learned_run), "--no-progress", "--json", str(out)]) == 0
    assert "validation split" in capsys.readouterr().out
    total = json.loads(out.read_text())["total"]
    assert total["n_targets"] == index.num_tokens - 1  # every token after the first, predicted once
    assert json.loads(out.read_text())["seq_len"] == cfg.seq_len and math.isfinite(total["bits_per_byte"])
    n_eval = cfg.eval_batches * cfg.global_batch_size * cfg.seq_len + 1  # the trainer's eval windows
    assert ev.main(["--checkpoint", str(learned_run), "--no-progress", "--max-bytes", str(n_eval),
                    "--json", str(out)]) == 0
    val = {r["step"]: r for r in read_jsonl(learned_run / "metrics.jsonl") if "val_bpb" in r}[16]
    assert json.loads(out.read_text())["total"]["bits_per_byte"] == pytest.approx(val["val_bpb"], rel=1e-4)
    # not a training run and no --data: one clear line
    assert ev.main(["--checkpoint", str(tmp_path), "--no-progress"]) == 2
    assert "pass --data" in capsys.readouterr().err


def test_checkpoint_restores_as_pretrained_params(learned_run):
    cfg, params, step = load_run(learned_run)
    assert isinstance(cfg, TrainConfig) and step == 16 and cfg.steps == 16
    leaves = [np.asarray(x) for x in jax.tree.leaves(params)]
    assert all(np.isfinite(x).all() for x in leaves)
    assert set(params) == {"tok_embeddings", "hash_embeddings", "encoder", "global", "decoder"}
    cfg8, params8, step8 = load_run(learned_run, step=8)
    assert step8 == 8
    assert not np.allclose(np.asarray(params8["tok_embeddings"]), np.asarray(params["tok_embeddings"]))


def test_resume_with_changed_model_shape_is_refused(learned_run, capsys):
    before = snapshot(learned_run)
    code = train.main(["--config", TINY, "--workdir", str(learned_run), *MESH_8,
                       *sets(steps=20, model__dim_global=128)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "dim_global: 64 -> 128" in err and "refusing to resume" in err
    assert snapshot(learned_run) == before


def test_finished_run_is_a_no_op(learned_run, capsys):
    before = snapshot(learned_run / "checkpoints")
    assert train.main(["--config", TINY, "--workdir", str(learned_run), *MESH_8, *sets(steps=16)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert snapshot(learned_run / "checkpoints") == before


# ====================================================================== patching inside the step
@pytest.mark.parametrize("mode", ["static", "space"])
def test_training_patches_start_with_one_byte_and_keep_the_blt_causal(mode):
    """Rows cover N + 1 positions with a 1-byte first patch, so logit i never sees bytes after i
    (the patcher's inference-style static lengths [4, 4, ...] would leak bytes 1..3 into logit 0)."""
    from bltjax.config import PatcherConfig, tiny_blt_config
    from bltjax.model import blt

    cfg = tiny_blt_config(patcher=PatcherConfig(mode=mode, patch_size=4, threshold=None))
    text = b"To be, or not to be, that is the question: whether 'tis nobler in the mind"
    tokens = jnp.asarray(np.frombuffer(text[:64], np.uint8).astype(np.int32)[None] + 4)
    n = tokens.shape[1]
    max_patches = train_step.max_patches_for(cfg, n)
    lengths, overflow = patcher.model_patch_lengths(cfg.patcher, tokens, None, max_patches=max_patches)
    assert int(lengths[0, 0]) == 1 and int(lengths.sum()) == n + 1 and not bool(overflow[0])
    if mode == "static":
        assert lengths[0, :4].tolist() == [1, 4, 4, 4] and max_patches == 17
    params = blt.init_params(cfg, jax.random.key(0))
    forward = jax.jit(lambda t, l: blt.forward(params, cfg, t, l))
    base = np.asarray(forward(tokens, lengths))
    for i in (0, 2, 5, 30):
        changed = tokens.at[0, i + 1:].set(jnp.asarray(np.arange(n - i - 1) % 50 + 70, jnp.int32))
        lengths2, _ = patcher.model_patch_lengths(cfg.patcher, changed, None, max_patches=max_patches)
        logits = np.asarray(forward(changed, lengths2))
        np.testing.assert_array_equal(logits[0, : i + 1], base[0, : i + 1])
        assert not np.allclose(logits[0, i + 1:], base[0, i + 1:])


# ====================================================================== entropy model -> entropy patching
def test_entropy_model_run_feeds_entropy_patching(tmp_path):
    ent_dir, blt_dir = tmp_path / "entropy", tmp_path / "blt"
    code = train.main(["--config", TINY, "--workdir", str(ent_dir), *MESH_8, *TINY_ENTROPY_MODEL,
                       *sets(train_entropy_model=True, steps=3)])
    assert code == 0
    ent_recs = read_jsonl(ent_dir / "metrics.jsonl")
    assert len(ent_recs) == 3 and "avg_patch_size" not in ent_recs[0] and math.isfinite(ent_recs[-1]["loss"])
    # threshold = median entropy of the first batch under the trained entropy model: about half the
    # positions start a patch; the trainer's patching must agree with a host-side recomputation
    ent_cfg, ent_params, _ = load_run(ent_dir)
    # the patching / eval tools open the same workdir as an entropy model (--entropy-model DIR)
    tool_model = pretrained.load_entropy_model(ent_dir)
    assert tool_model.config == ent_cfg.model.entropy_model
    jax.tree.map(np.testing.assert_array_equal, tool_model.params, ent_params)
    tokens = jnp.asarray(next(train.make_data_iterator(ent_cfg))["tokens"])
    pcfg = dataclasses.replace(ent_cfg.model.patcher, mode="entropy", threshold=1.0)
    entropies = entropy_model.compute_entropies(ent_params, ent_cfg.model.entropy_model, pcfg, tokens)
    threshold = float(np.median(np.asarray(entropies)))
    code = train.main(["--config", TINY, "--workdir", str(blt_dir), *MESH_8,
                       *sets(steps=3, model__patcher__mode="entropy", model__patcher__threshold=threshold,
                             model__patcher__max_patches=65, entropy_model_checkpoint=str(ent_dir),
                             eval_every=3, eval_batches=2)])
    assert code == 0
    recs = read_jsonl(blt_dir / "metrics.jsonl")
    assert [r["step"] for r in recs if "loss" in r] == [1, 2, 3]
    blt_cfg = config_from_dict(json.loads((blt_dir / "config.json").read_text()))
    assert blt_cfg.model.entropy_model == ent_cfg.model.entropy_model  # filled in from the checkpoint
    _, stats = train_step.patch_batch(blt_cfg, tokens, ent_params)
    expected = float(stats["n_positions_sum"] / stats["n_patches_sum"])
    assert 1.5 < expected < 4 and recs[0]["overflow_frac"] == 0.0
    assert recs[0]["avg_patch_size"] == pytest.approx(expected, rel=1e-5)
    # the eval reports the same statistic on the held-out split (the calibration check of the README)
    val_stats = [train_step.patch_batch(blt_cfg, jnp.asarray(b["tokens"]), ent_params)[1]
                 for b in itertools.islice(train.make_data_iterator(blt_cfg, split="validation"), 2)]
    val_expected = (sum(float(s["n_positions_sum"]) for s in val_stats)
                    / sum(float(s["n_patches_sum"]) for s in val_stats))
    val_rec = [r for r in recs if "val_bpb" in r][-1]
    assert val_rec["val_avg_patch_size"] == pytest.approx(val_expected, rel=1e-5)


# ====================================================================== NaN / inf
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    workdir = tmp_path / "nan"
    code = train.main(["--config", TINY, "--workdir", str(workdir), *MESH_8,
                       *sets(optim__lr=1e30, optim__warmup_steps=0, optim__schedule="constant", steps=6,
                             checkpoint__every=1, checkpoint__async_save=False)])
    err = capsys.readouterr().err
    assert code == 3
    assert "error: loss/gradient became NaN or inf at step 2" in err and "Last good checkpoint: step 1" in err
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [1]
    recs = read_jsonl(workdir / "metrics.jsonl")
    assert math.isfinite(recs[0]["loss"]) and not math.isfinite(recs[1]["loss"])


# ====================================================================== bad input -> exit 2, nothing written
def _text_file(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("case", ["missing", "empty", "binary", "bad_utf8", "typo_key", "typo_value",
                                  "batch_vs_mesh", "mesh_vs_devices", "no_config", "broken_config",
                                  "entropy_ckpt_missing"])
def test_bad_input_is_one_line_error_and_writes_nothing(case, tmp_path, capsys):
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "keep.txt").write_text("untouched")
    text = ["--set", "data.source=text"]
    args = {
        "missing": text + ["--set", f"data.path={tmp_path / 'nope.txt'}"],
        "empty": text + ["--set", "data.path=" + _text_file(tmp_path, "empty.txt", b"")],
        "binary": text + ["--set", "data.path=" + _text_file(tmp_path, "x.bin", bytes(range(256)) * 8)],
        "bad_utf8": text + ["--set", "data.allow_invalid_utf8=false",  # (raw bytes are accepted by default)
                            "--set", "data.path=" + _text_file(tmp_path, "bad.txt", b"hello \xff\xfe world\n" * 9)],
        "typo_key": ["--set", "optim.lrr=1e-3"],
        "typo_value": ["--set", "precision=bf16"],
        "batch_vs_mesh": ["--set", "global_batch_size=6"],
        "mesh_vs_devices": ["--set", "mesh.ici_data=3"],
        "no_config": ["--config", str(tmp_path / "nope.py")],
        "broken_config": ["--config", _text_file(tmp_path, "broken.py", b"def get_config(:\n")],
        "entropy_ckpt_missing": ["--set", "model.patcher.mode=entropy", "--set", "model.patcher.threshold=1.0",
                                 "--set", f"entropy_model_checkpoint={tmp_path / 'no-such-run'}"],
    }[case]
    if "--config" not in args:
        args = ["--config", TINY, *args]
    code = train.main([*args, "--workdir", str(workdir)])
    out = capsys.readouterr()
    assert code == 2, out
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.err
    expected = {"missing": "does not exist", "empty": "empty", "binary": "binary", "bad_utf8": "invalid UTF-8",
                "typo_key": "did you mean", "typo_value": "precision", "batch_vs_mesh": "not divisible",
                "mesh_vs_devices": "mesh", "no_config": "not found", "broken_config": "SyntaxError",
                "entropy_ckpt_missing": "does not exist"}[case]
    assert expected in lines[0], lines[0]
    assert snapshot(workdir) == {"keep.txt": b"untouched"}


# ====================================================================== default config and experiments
def test_default_config_is_packaged_and_resolves_from_any_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = train.build_parser().parse_args([])
    assert train.config_path(args.config) == str(train.DEFAULT_CONFIG) and train.DEFAULT_CONFIG.is_file()
    setup = train.prepare(args)
    assert setup.cfg.name == "default" and setup.cfg.data.source == "embedded"
    assert setup.workdir == pathlib.Path("runs") / "default" and not setup.resuming
    assert not (tmp_path / "runs").exists()  # prepare() writes nothing
    batch = next(setup.train_iter)
    assert batch["tokens"].shape == (setup.cfg.global_batch_size, setup.cfg.seq_len)


@pytest.mark.parametrize("path", sorted((REPO / "experiments").glob("*.py")), ids=lambda p: p.stem)
def test_every_experiment_validates(path):
    cfg = load_config(path).validate()
    doc = path.read_text().split('"""')[1]
    assert "python -m bltjax.train" in doc and ("Expected" in doc or "expected" in doc), path.name
    assert cfg.steps >= 1


def _orbax_params(workdir: pathlib.Path, step: int) -> dict:
    """The params saved at ``step``, read with Orbax directly (not through bltjax's checkpoint code)."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        state = ckptr.restore((workdir / "checkpoints" / str(step) / "state").resolve())
    return jax.tree.map(np.asarray, state["params"])


def test_workdir_loads_the_newest_checkpoint_with_load_pretrained(learned_run):
    """load_pretrained(workdir) gives exactly the logits of the newest step's params (16), which differ
    from the older step's (8)."""
    import bltjax

    m = bltjax.load_pretrained(learned_run)
    tokens = np.asarray([[1] + [ord(c) + 4 for c in "def main():"]], np.int32)
    lengths = m.patch(tokens)
    assert lengths.shape[0] == 1 and lengths[0, 0] == 1
    logits = m.logits(tokens)
    assert logits.shape == (1, tokens.shape[1], 260) and np.isfinite(logits).all()
    newest, older = _orbax_params(learned_run, 16), _orbax_params(learned_run, 8)
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, m.params), newest)
    same_code = lambda params: dataclasses.replace(m, params=jax.tree.map(jnp.asarray, params), _fns={})  # noqa: E731
    np.testing.assert_array_equal(logits, same_code(newest).logits(tokens, lengths))
    assert np.max(np.abs(logits - same_code(older).logits(tokens, lengths))) > 1e-3
