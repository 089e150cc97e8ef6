"""BLT 4B (paper Table 10 row, spec §12.1): local 1024 wide (1 encoder / 9 decoder layers,
16 heads), global 3072 wide x 36 layers (24 heads), cross-attention 16 heads with k=3
(k*d_local = d_global: no global input projection); hash n-grams 3..8 with 500002 rows, local window 512, RoPE theta 500000;
entropy patching (threshold 1.335, the released value) with a frozen entropy model; bf16 compute with
fp32 master weights, remat "full", AdamW 4e-4 (b2 0.95, wd 0.1, clip 1.0, 2000 warm-up steps, cosine
to 10 %), rows of 16384 bytes (<= 4096 patches), 512 rows per step (8 MiB of bytes).

Launch (TPU v5p-512 (one slice)); run the same command on every host, with a workdir on a filesystem
all hosts share (a gcsfuse / NFS mount: gs:// paths are not accepted as --workdir):

    export BLTJAX_DATA_DIR=/mnt/bucket/tfds            # a TFDS dataset built by bltjax.data.tfds_builder
    export BLTJAX_ENTROPY_MODEL=/mnt/bucket/entropy_model  # release entropy_model/ dir or a bltjax entropy run
    python -m bltjax.train --config experiments/blt_4b.py --distributed --workdir /mnt/bucket/runs/blt_4b

(launch/ has the queued-resource / xpk wrappers.)  Mesh: FSDP over the slice (``ici_fsdp=-1``), data
parallel across slices (``dcn_data=-1``); on GPU nodes add ``--set mesh.ici_tensor=8`` for tensor
parallelism inside a node if memory demands it.  Override anything with ``--set``, e.g.
``--set data.tfds_name=fineweb_edu_10bt``.

Expected: not run as part of bltjax's tests (no accelerator pod here).  The paper reports this size
reaching the bits per byte of a BPE Llama of equal training FLOPs at its compute-optimal budget; use the
logged ``bpb`` / ``val_bpb``, ``avg_patch_size`` (about 4.5 for entropy patching at this threshold),
``overflow_frac`` (should stay ~0; raise ``model.patcher.max_patches`` if not) and ``mfu``.
"""

from bltjax.experiments_paper import paper_config


def get_config():
    return paper_config("blt_4b")
