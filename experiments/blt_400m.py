"""BLT 400M (paper Table 10 row, spec §12.1): local 768 wide (1 encoder / 7 decoder layers,
12 heads), global 1280 wide x 24 layers (10 heads), cross-attention 12 heads with k=2
(k*d_local = 1536 != 1280: the global input projection is on); hash n-grams 3..8 with 500002 rows, local window 512, RoPE theta 500000;
shared settings (entropy patching, bf16, AdamW, 16 KiB rows, mesh) are in bltjax/experiments_paper.py.

Launch on TPU v5e-64 (one slice):

    export BLTJAX_DATA_DIR=/mnt/bucket/tfds               # TFDS dataset (bltjax.data.tfds_builder)
    export BLTJAX_ENTROPY_MODEL=/mnt/bucket/entropy_model  # release entropy_model/ or a bltjax entropy run
    python -m bltjax.train --config experiments/blt_400m.py --distributed --workdir /mnt/bucket/runs/blt_400m

Expected: unmeasured here (no accelerator); see bltjax/experiments_paper.py for what to watch.
"""

from bltjax.experiments_paper import paper_config


def get_config():
    return paper_config("blt_400m")
