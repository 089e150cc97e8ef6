"""Paper Table 10 BLT sizes (design §12.1) as one table; ``experiments/blt_paper.py:<size>`` selects a row.

Shared by every size: entropy patching at the released threshold (frozen entropy model, 14 x 768,
window 512), hash n-grams 3..8 with 500002 rows, local window 512, rows of 16384 bytes (<= 4096
patches), bf16 compute with fp32 master weights, AdamW 4e-4 (b2 0.95, wd 0.1, clip 1.0, 2000 warm-up
steps, cosine to 10 %), FSDP inside a slice and data parallel across slices.  Environment:
BLTJAX_TFDS_NAME / BLTJAX_DATA_DIR (training data), BLTJAX_ENTROPY_MODEL (entropy model checkpoint).

Launch: run the same command on every host with a workdir all hosts can see (``gs://bucket/run`` or a
shared mount); ``launch/tpu_vm.sh`` and ``launch/slurm.sbatch`` wrap it.
On GPU nodes add ``--set mesh.ici_tensor=8`` if memory demands tensor parallelism.

Expected: not run as part of bltjax's tests (no accelerator pod here).  The paper reports these sizes
reaching the bits per byte of a BPE Llama of equal training FLOPs at its compute-optimal budget; watch
the logged ``bpb`` / ``val_bpb``, ``avg_patch_size`` (about 4.5 at the released threshold),
``overflow_frac`` (should stay ~0; raise ``model.patcher.max_patches`` if not) and ``mfu``.
"""

import os

from bltjax.config import BLTConfig, PatcherConfig, TransformerConfig
from bltjax.data import DataConfig
from bltjax.sharding import MeshConfig
from bltjax.train_config import CheckpointConfig, OptimConfig, TrainConfig

# name: (d_local, decoder layers, local heads, d_global, global layers, global heads, k, remat, rows/step,
#        rows per device at once, steps)
# remat and rows per device are what fits each size's slice (python -m bltjax.aot, docs/tpu.md): 400M on
# v5e-64, 1B on v5p-128, 2B on v5p-256, 4B on v5p-512, 8B on 2 x v5p-512 (or v5p-256 with 4 micro-batches).
# Micro-batches (gradient accumulation) follow from the slice: rows/step / (chips x rows per device).
PAPER_SIZES = {
    "blt_400m": (768, 7, 12, 1280, 24, 10, 2, "full", 256, 1, 60000),
    "blt_1b": (1024, 9, 16, 2048, 25, 16, 2, "dots", 256, 4, 100000),
    "blt_2b": (1024, 9, 16, 2560, 26, 20, 3, "full", 512, 4, 100000),
    "blt_4b": (1024, 9, 16, 3072, 36, 24, 3, "full", 512, 2, 120000),
    "blt_8b": (1280, 6, 20, 4096, 32, 32, 4, "full", 1024, 2, 120000),
}


def paper_config(name: str) -> TrainConfig:
    """The training config of one Table 10 row: ``name`` is a key of ``PAPER_SIZES`` (``"blt_1b"``)."""
    if name not in PAPER_SIZES:
        sizes = ", ".join(k.removeprefix("blt_") for k in PAPER_SIZES)
        raise ValueError(f"unknown paper size {name.removeprefix('blt_')!r} (choose one of {sizes})")
    d_local, l_dec, h_local, d_global, l_global, h_global, k, remat, batch, per_device, steps = PAPER_SIZES[name]
    model = BLTConfig(
        dim_local_encoder=d_local, dim_local_decoder=d_local, n_layers_local_encoder=1,
        n_layers_local_decoder=l_dec, n_heads_local_encoder=h_local, n_heads_local_decoder=h_local,
        dim_global=d_global, n_layers_global=l_global, n_heads_global=h_global, cross_attn_k=k,
        cross_attn_nheads=h_local, encoder_hash_byte_group_size=(3, 4, 5, 6, 7, 8),
        encoder_hash_byte_group_vocab=500002, local_attention_window_len=512, max_encoder_seq_length=16384,
        max_seqlen=4096,
        patcher=PatcherConfig(mode="entropy", threshold=1.335442066192627, patch_size=4.5, max_patches=4096),
        entropy_model=TransformerConfig(dim=768, n_layers=14, n_heads=12, sliding_window=512, max_seqlen=8192),
        remat=remat,
    )
    return TrainConfig(
        name=name,
        model=model,
        data=DataConfig(source="tfds", tfds_name=os.environ.get("BLTJAX_TFDS_NAME", "fineweb_edu"),
                        tfds_data_dir=os.environ.get("BLTJAX_DATA_DIR", ""), worker_count=4),
        entropy_model_checkpoint=os.environ.get("BLTJAX_ENTROPY_MODEL", "entropy_model"),
        optim=OptimConfig(lr=4e-4, warmup_steps=2000, schedule="cosine", lr_min_ratio=0.1, clip=1.0),
        checkpoint=CheckpointConfig(every=1000, keep_latest=3, keep_every=10_000),
        mesh=MeshConfig(ici_fsdp=-1, dcn_data=-1),
        seq_len=16384,
        global_batch_size=batch,
        rows_per_device=per_device,
        steps=steps,
        log_every=50,
        eval_every=2000,
        eval_batches=16,
        precision="bfloat16",
    )
