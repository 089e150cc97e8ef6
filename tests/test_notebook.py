"""experiments/colab_quickstart.ipynb runs top to bottom (nbclient, CPU, tiny sizes in place of the
parameter cell's), the hub cell left off by its opt-in flag (its code, ``bltjax.hub``, is tested in
test_hub.py on local fixtures)."""

import json
import math
import pathlib

import nbformat
from nbclient import NotebookClient

from bltjax.metrics import read_jsonl

REPO = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "experiments" / "colab_quickstart.ipynb"

TINY = """
INSTALL = False
WORKDIR = {workdir!r}
LOG_EVERY = 5
ENTROPY_MODEL = dict(dim=32, n_layers=1, n_heads=2, multiple_of=32, sliding_window=64, max_seqlen=64)
ENTROPY_SEQ_LEN = 64
ENTROPY_STEPS = 20
CALIBRATION_BYTES = 20_000
MODEL = dict(dim_local_encoder=32, dim_local_decoder=32, n_layers_local_encoder=1, n_layers_local_decoder=1,
             n_heads_local_encoder=2, n_heads_local_decoder=2, dim_global=64, n_layers_global=1,
             n_heads_global=2, cross_attn_nheads=2, multiple_of=32, encoder_hash_byte_group_vocab=97,
             local_attention_window_len=64, max_encoder_seq_length=64, max_seqlen=64)
SEQ_LEN = 64
BATCH = 8
STEPS = 30
LR = 3e-3
MAX_NEW_BYTES = 24
EVAL_MAX_BYTES = 4000
"""


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "LOAD_FROM_HUB = False" in params[0].source
    assert 'REPO_URL = "https://github.com/<org>/bltjax"' in params[0].source


def test_quickstart_notebook_runs_on_cpu(tmp_path, data_cache, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    workdir = tmp_path / "quickstart"
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(TINY.format(workdir=str(workdir))))
    # the kernel inherits this environment: one CPU device, this checkout, the corpus cache (data_cache)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    summary = json.loads((workdir / "quickstart.json").read_text())
    assert summary["precision"] == "float32"  # CPU
    assert summary["entropy_loss_last"] < summary["entropy_loss_first"]
    assert summary["blt_loss_last"] < summary["blt_loss_first"]
    assert math.isfinite(summary["val_bpb"]) and 0 < summary["val_bpb"] < 9
    assert summary["generated"].strip()
    png = pathlib.Path(summary["patch_png"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (workdir / "blt" / "loss.png").is_file()
    # the BLT trained with entropy patching at the calibrated threshold, and the run's records agree
    cfg = json.loads((workdir / "blt" / "config.json").read_text())
    assert cfg["model"]["patcher"]["mode"] == "entropy"
    assert cfg["model"]["patcher"]["threshold"] == summary["threshold"]
    losses = [r["loss"] for r in read_jsonl(workdir / "blt" / "metrics.jsonl") if "loss" in r]
    assert losses[-1] == summary["blt_loss_last"]
    # outputs the user sees: the generated text, the hub cell skipped, a loss figure
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert summary["generated"] in text and "skipped (LOAD_FROM_HUB = False)" in text
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
