"""The default experiment: what ``python -m bltjax.train`` (no arguments) runs.

A small BLT (0.7M parameters plus 1.05M of hash embeddings) trained for a few hundred steps on the
embedded corpus (Python standard-library sources shipped with every Python; no download), static
4-byte patches, float32, on whatever devices JAX finds.  On the 2-core build CPU the whole run took
2.6 minutes (30 s of it compiling, ~0.35 s per step) and printed training bits per byte falling from
8.6 to ~2.3 (noisy per batch); validation bits per byte on held-out stdlib files, every 100 steps:
2.42, 1.86, 1.74.  Workdir: ``./runs/default`` (run it again to resume; delete it to
start over).

    python -m bltjax.train
    python -m bltjax.train --set steps=1000 --workdir runs/longer      # any field can be overridden

``experiments/default.py`` re-exports this file so the default also reads like every other experiment;
other experiments import ``model_config`` from here instead of copying it.
"""

from bltjax.config import BLTConfig, PatcherConfig
from bltjax.data import DataConfig
from bltjax.sharding import MeshConfig
from bltjax.train_config import CheckpointConfig, OptimConfig, TrainConfig


def model_config() -> BLTConfig:
    """Local models 64 wide (1 encoder + 2 decoder layers), global 128 wide x 2 layers, k=2."""
    return BLTConfig(
        dim_local_encoder=64, dim_local_decoder=64, n_layers_local_encoder=1, n_layers_local_decoder=2,
        n_heads_local_encoder=2, n_heads_local_decoder=2, dim_global=128, n_layers_global=2,
        n_heads_global=2, cross_attn_k=2, cross_attn_nheads=2, multiple_of=64,
        encoder_hash_byte_group_size=(3, 4, 5, 6), encoder_hash_byte_group_vocab=4099,
        local_attention_window_len=256, max_encoder_seq_length=256, max_seqlen=128,
        patcher=PatcherConfig(mode="static", patch_size=4, threshold=None),
    )


def get_config() -> TrainConfig:
    return TrainConfig(
        name="default",
        model=model_config(),
        data=DataConfig(source="embedded", embedded_max_bytes=2_000_000),
        optim=OptimConfig(lr=3e-3, warmup_steps=30, weight_decay=0.01, clip=1.0),
        checkpoint=CheckpointConfig(every=100, keep_latest=2),
        mesh=MeshConfig(),
        seq_len=256,
        global_batch_size=8,
        steps=300,
        log_every=10,
        eval_every=100,
        eval_batches=8,
        precision="float32",
    )
