"""BLT 1B (paper Table 10 row, spec §12.1): local 1024 wide (1 encoder / 9 decoder layers,
16 heads), global 2048 wide x 25 layers (16 heads), cross-attention 16 heads with k=2
(k*d_local = d_global: no global input projection); hash n-grams 3..8 with 500002 rows, local window 512, RoPE theta 500000;
shared settings (entropy patching, bf16, AdamW, 16 KiB rows, mesh) are in bltjax/experiments_paper.py.

Launch on TPU v5p-128 (one slice):

    export BLTJAX_DATA_DIR=/mnt/bucket/tfds               # TFDS dataset (bltjax.data.tfds_builder)
    export BLTJAX_ENTROPY_MODEL=/mnt/bucket/entropy_model  # release entropy_model/ or a bltjax entropy run
    python -m bltjax.train --config experiments/blt_1b.py --distributed --workdir /mnt/bucket/runs/blt_1b

Expected: unmeasured here (no accelerator); see bltjax/experiments_paper.py for what to watch.
"""

from bltjax.experiments_paper import paper_config


def get_config():
    return paper_config("blt_1b")
