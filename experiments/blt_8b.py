"""BLT 8B (paper Table 10 row, spec §12.1): local 1280 wide (1 encoder / 6 decoder layers,
20 heads), global 4096 wide x 32 layers (32 heads), cross-attention 20 heads with k=4
(k*d_local = 5120 != 4096: the global input projection is on); hash n-grams 3..8 with 500002 rows, local window 512, RoPE theta 500000;
shared settings (entropy patching, bf16, AdamW, 16 KiB rows, mesh) are in bltjax/experiments_paper.py.

Launch on 2 x TPU v5p-512 (multi-slice over DCN) or 16 nodes x 8 H100:

    export BLTJAX_DATA_DIR=/mnt/bucket/tfds               # TFDS dataset (bltjax.data.tfds_builder)
    export BLTJAX_ENTROPY_MODEL=/mnt/bucket/entropy_model  # release entropy_model/ or a bltjax entropy run
    python -m bltjax.train --config experiments/blt_8b.py --distributed --workdir /mnt/bucket/runs/blt_8b

Expected: unmeasured here (no accelerator); see bltjax/experiments_paper.py for what to watch.
"""

from bltjax.experiments_paper import paper_config


def get_config():
    return paper_config("blt_8b")
