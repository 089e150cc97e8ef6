"""One GPU (Colab T4 / L4 / A100 / H100): a BLT of 27M parameters (+100M in hash tables), bf16 compute.

Launch (Colab: Runtime -> GPU; then in a cell)::

    !pip install -q "jax[cuda13]==0.12.0.1" && pip install -q -e .        # or: pip install -e .[cuda]
    !python -m bltjax.train --config experiments/colab_gpu.py --workdir /content/runs/colab_gpu
    # Tiny Shakespeare instead of the embedded corpus (downloaded once into ~/.cache/bltjax/data):
    !python -m bltjax.train --config experiments/colab_gpu.py --set data.source=text \
        --set data.path=fetch:tinyshakespeare --set data.split_rule=stream

Model: local encoder/decoder 256 wide (1 + 4 layers, 4 heads), global 512 wide x 6 layers (8 heads)
on static 4-byte patches (k=2), 6 hash tables of 65521 rows; rows of 1024 bytes, batch 32 (32 KiB per
step), AdamW 1e-3, 5000 steps, bf16 compute with fp32 master weights.  ``model.attention_impl="auto"``
uses cuDNN attention on Ampere/Hopper and XLA attention elsewhere (T4); on a T4, which has no fast
bf16, add ``--set precision=float32``.

Expected: not measured on a GPU here (the development machine has none).  Budget about 20-40 min on
an A100 for the 5000 steps; bits per byte should fall below ~2 on the stdlib corpus (code compresses
well), with ``mfu`` and ``bytes_per_s`` logged every 100 steps.
"""

from bltjax.config import BLTConfig, PatcherConfig
from bltjax.data import DataConfig
from bltjax.sharding import MeshConfig
from bltjax.train_config import CheckpointConfig, OptimConfig, TrainConfig


def get_config() -> TrainConfig:
    model = BLTConfig(
        dim_local_encoder=256, dim_local_decoder=256, n_layers_local_encoder=1, n_layers_local_decoder=4,
        n_heads_local_encoder=4, n_heads_local_decoder=4, dim_global=512, n_layers_global=6,
        n_heads_global=8, cross_attn_k=2, cross_attn_nheads=4,
        encoder_hash_byte_group_size=(3, 4, 5, 6, 7, 8), encoder_hash_byte_group_vocab=65521,
        local_attention_window_len=512, max_encoder_seq_length=1024, max_seqlen=512,
        patcher=PatcherConfig(mode="static", patch_size=4, threshold=None),
        attention_impl="auto",
    )
    return TrainConfig(
        name="colab_gpu",
        model=model,
        data=DataConfig(source="embedded", worker_count=0, prefetch_batches=8),
        optim=OptimConfig(lr=1e-3, warmup_steps=200, weight_decay=0.1),
        checkpoint=CheckpointConfig(every=1000, keep_latest=2),
        mesh=MeshConfig(),
        seq_len=1024,
        global_batch_size=32,
        steps=5000,
        log_every=100,
        eval_every=1000,
        eval_batches=8,
        precision="bfloat16",
    )
