"""Tiny training experiment for the trainer tests (``--config tests/helpers/train_child_tiny.py``).

A ~60k-parameter BLT (``tiny_blt_config``: local dim 32, global dim 64), 64-byte rows, batch 8, static
patches, on 200 kB of the embedded corpus; logs every step, checkpoints every 3 steps (async), no
evaluation unless overridden.  A (2, 2, 2) mesh on 8 devices by default (``--set mesh.ici_data=1 ...``
to change it).
"""

from bltjax.config import tiny_blt_config
from bltjax.data import DataConfig
from bltjax.sharding import MeshConfig
from bltjax.train_config import CheckpointConfig, OptimConfig, TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig(
        name="tiny",
        model=tiny_blt_config(),
        data=DataConfig(source="embedded", embedded_max_bytes=200_000, prefetch_batches=2),
        optim=OptimConfig(lr=3e-3, warmup_steps=2, weight_decay=0.01),
        checkpoint=CheckpointConfig(every=3, keep_latest=3),
        mesh=MeshConfig(ici_data=2, ici_fsdp=2, ici_tensor=2),
        seq_len=64,
        global_batch_size=8,
        steps=12,
        log_every=1,
        eval_every=0,
        tensorboard=False,
    )
