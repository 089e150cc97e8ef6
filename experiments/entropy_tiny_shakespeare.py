"""Entropy model (small byte LM) on Tiny Shakespeare, for entropy patching of a BLT.

Launch (the corpus is downloaded on first use into the data cache, see ``python -m bltjax.data.fetch``;
point at a local copy with ``--set data.path=PATH/input.txt``):

    python -m bltjax.train --config experiments/entropy_tiny_shakespeare.py       # ./runs/entropy_tiny_shakespeare

Model: ``model.entropy_model`` = 4 layers x 128 wide, 4 heads, sliding window 512 (design §2), trained on
rows of 512 bytes (the window), batch 8 (4 KiB per step), 1000 steps; 0.92M parameters, ~6.9 MFLOPs per
byte.  Same pipeline, sharding, checkpoints and metrics as BLT training.  The finished workdir is a
valid ``entropy_model_checkpoint``; pick a threshold for a target mean patch size, then train a BLT
that patches with it::

    python -m bltjax.entropy_tools calibrate --entropy-model runs/entropy_tiny_shakespeare \
        --data fetch:tinyshakespeare --target-bytes-per-patch 4 \
        --seq-len 256 --sample-bytes 1000000      # the BLT's row length; the training split only
    python -m bltjax.train --config experiments/tiny_shakespeare.py --workdir runs/ts_entropy \
        --set model.patcher.mode=entropy --set model.patcher.threshold=<calibrated> \
        --set model.patcher.max_patches=128 --set entropy_model_checkpoint=runs/entropy_tiny_shakespeare

Expected (measured on the 2-core build CPU, shared with other jobs): validation bits per byte of the
entropy model itself (4 batches = 16 KiB of the held-out text, every 250 steps) 2.71, 2.33, 2.17, 2.13
at steps 250 / 500 / 750 / 1000; 15.5 min wall with huge-page malloc (28 min before it).  Calibration as
above gives threshold 2.09665; the BLT trained with it patches the validation split at 3.90 bytes per
patch (target 4, within 2.6 %) and reaches val bits per byte 2.19 on the trainer's 32 KiB validation
sample, 2.30 on the whole split (README, "Patching").
"""

from bltjax.config import BLTConfig, TransformerConfig
from bltjax.data import DataConfig
from bltjax.sharding import MeshConfig
from bltjax.train_config import CheckpointConfig, OptimConfig, TrainConfig

DATA = "fetch:tinyshakespeare"  # downloaded once into $BLTJAX_DATA_DIR (default ~/.cache/bltjax/data)


def get_config() -> TrainConfig:
    entropy = TransformerConfig(dim=128, n_layers=4, n_heads=4, multiple_of=64, sliding_window=512, max_seqlen=512)
    return TrainConfig(
        name="entropy_tiny_shakespeare",
        model=BLTConfig(entropy_model=entropy),  # only model.entropy_model is built and trained
        train_entropy_model=True,
        data=DataConfig(source="text", path=DATA, split_rule="stream", val_fraction=0.1),
        optim=OptimConfig(lr=2e-3, warmup_steps=100, weight_decay=0.01, lr_min_ratio=0.05),
        checkpoint=CheckpointConfig(every=500, keep_latest=2),
        mesh=MeshConfig(),
        seq_len=512,
        global_batch_size=8,
        steps=1000,
        log_every=50,
        eval_every=250,
        eval_batches=4,
        precision="float32",
    )
