"""BLT paper sizes (paper Table 10, design §12.1), the size given after the file name:

    --config experiments/blt_paper.py:400m | :1b | :2b | :4b | :8b

1B row: local 1024 wide (1 encoder / 9 decoder layers, 16 heads), global 2048 wide x 25 layers
(16 heads), cross-attention 16 heads with k=2 (k*d_local = d_global: no global input projection);
hash n-grams 3..8 with 500002 rows, local window 512, RoPE theta 500000.  The table and the shared
settings (entropy patching, bf16, AdamW, 16 KiB rows, mesh) are in ``bltjax/configs/paper.py``.

Launch on TPU v5p-128 (one slice):

    export BLTJAX_DATA_DIR=/mnt/bucket/tfds               # TFDS dataset (bltjax.data.tfds_builder)
    export BLTJAX_ENTROPY_MODEL=/mnt/bucket/entropy_model  # release entropy_model/ or a bltjax entropy run
    python -m bltjax.train --config experiments/blt_paper.py:1b --distributed --workdir gs://bucket/runs/blt_1b

Expected memory fit (compiled for each size's slice from a CPU machine with ``python -m bltjax.aot``, figures
in docs/tpu.md): 400M on v5e-64, 1B on v5p-128, 2B on v5p-256, 4B on v5p-512, 8B on 2 x v5p-512 or on a
v5p-256.  ``rows_per_device`` fixes the rows per chip; the micro-batches follow from the slice.
Training speed is unmeasured here (no accelerator); see bltjax/configs/paper.py for what to watch.
"""

from bltjax.configs.paper import paper_config


def get_config(size: str = "1b"):
    return paper_config(f"blt_{size}")
