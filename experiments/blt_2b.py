"""BLT 2B (paper Table 10 row, spec §12.1): local 1024 wide (1 encoder / 9 decoder layers,
16 heads), global 2560 wide x 26 layers (20 heads), cross-attention 16 heads with k=3
(k*d_local = 3072 != 2560: the global input projection is on); hash n-grams 3..8 with 500002 rows, local window 512, RoPE theta 500000;
entropy patching (threshold 1.335, the released value) with a frozen entropy model; bf16 compute with
fp32 master weights, remat "full", AdamW 4e-4 (b2 0.95, wd 0.1, clip 1.0, 2000 warm-up steps, cosine
to 10 %), rows of 16384 bytes (<= 4096 patches), 512 rows per step (8 MiB of bytes).

Launch (TPU v5p-256 (one slice)); run the same command on every host, with a workdir on a filesystem
all hosts share (a gcsfuse / NFS mount: gs:// paths are not accepted as --workdir):

    export BLTJAX_DATA_DIR=/mnt/bucket/tfds            # a TFDS dataset built by bltjax.data.tfds_builder
    export BLTJAX_ENTROPY_MODEL=/mnt/bucket/entropy_model  # release entropy_model/ dir or a bltjax entropy run
    python -m bltjax.train --config experiments/blt_2b.py --distributed --workdir /mnt/bucket/runs/blt_2b

(launch/ has the queued-resource / xpk wrappers.)  Mesh: FSDP over the slice (``ici_fsdp=-1``), data
parallel across slices (``dcn_data=-1``); on GPU nodes add ``--set mesh.ici_tensor=8`` for tensor
parallelism inside a node if memory demands it.  Override anything with ``--set``, e.g.
``--set data.tfds_name=fineweb_edu_10bt``.

Expected: not run as part of bltjax's tests (no accelerator pod here).  The paper reports this size
reaching the bits per byte of a BPE Llama of equal training FLOPs at its compute-optimal budget; use the
logged ``bpb`` / ``val_bpb``, ``avg_patch_size`` (about 4.5 for entropy patching at this threshold),
``overflow_frac`` (should stay ~0; raise ``model.patcher.max_patches`` if not) and ``mfu``.
"""

import os

from bltjax.config import BLTConfig, PatcherConfig, TransformerConfig
from bltjax.data import DataConfig
from bltjax.sharding import MeshConfig
from bltjax.train_config import CheckpointConfig, OptimConfig, TrainConfig


def get_config() -> TrainConfig:
    model = BLTConfig(
        dim_local_encoder=1024, dim_local_decoder=1024, n_layers_local_encoder=1, n_layers_local_decoder=9,
        n_heads_local_encoder=16, n_heads_local_decoder=16, dim_global=2560, n_layers_global=26,
        n_heads_global=20, cross_attn_k=3, cross_attn_nheads=16,
        encoder_hash_byte_group_size=(3, 4, 5, 6, 7, 8), encoder_hash_byte_group_vocab=500002,
        local_attention_window_len=512, max_encoder_seq_length=16384, max_seqlen=4096,
        patcher=PatcherConfig(mode="entropy", threshold=1.335442066192627, patch_size=4.5, max_patches=4096),
        entropy_model=TransformerConfig(dim=768, n_layers=14, n_heads=12, sliding_window=512, max_seqlen=8192),
        remat="full",
    )
    return TrainConfig(
        name="blt_2b",
        model=model,
        data=DataConfig(source="tfds", tfds_name=os.environ.get("BLTJAX_TFDS_NAME", "fineweb_edu"),
                        tfds_data_dir=os.environ.get("BLTJAX_DATA_DIR", ""), worker_count=4),
        entropy_model_checkpoint=os.environ.get("BLTJAX_ENTROPY_MODEL", "entropy_model"),
        optim=OptimConfig(lr=4e-4, warmup_steps=2000, schedule="cosine", lr_min_ratio=0.1, clip=1.0),
        checkpoint=CheckpointConfig(every=1000, keep_latest=3, keep_every=10_000),
        mesh=MeshConfig(ici_fsdp=-1, dcn_data=-1),
        seq_len=16384,
        global_batch_size=512,
        steps=100000,
        log_every=50,
        eval_every=2000,
        eval_batches=16,
        precision="bfloat16",
    )
