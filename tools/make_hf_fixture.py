"""Generate ``tests/data/hf-tiny``: a tiny random Hugging Face ``BltForCausalLM`` and its outputs.

Not part of the package and not run by the tests: it needs ``torch`` and ``transformers`` (a separate
venv), e.g.::

    python3 -m venv ../hfvenv && ../hfvenv/bin/pip install torch==2.13.0 transformers safetensors
    ../hfvenv/bin/python tools/make_hf_fixture.py --out tests/data/hf-tiny

What it writes (``tests/data/hf-tiny/README.md`` describes every array):

* ``config.json`` + ``model.safetensors``: ``save_pretrained`` of a randomly initialised model with an
  entropy patcher (GQA in the global transformer and in the patcher, a global input projection because
  ``k * d_E != d_G``, two hash functions, sliding windows shorter than the inputs);
* ``expected.npz``: BOS-prefixed inputs (ASCII, multilingual, code), the HF patcher's entropies and
  patch lengths, and the fp32 logits of ``BltForCausalLM`` for each input and for a 2-row batch
  (``batch_patch_lengths_hf_raw``: the patcher's batched output, ``-1`` end markers included); the
  ``*_mpl4`` arrays repeat patch lengths and logits with ``max_patch_length=4`` (same weights);
* ``torch_dtypes.pth`` / ``torch_dtypes.npz``: a ``torch.save`` of tensors of many dtypes, views with
  storage offsets / strides / shared storages, a parameter and a scalar, with their numpy twins (bf16
  stored as uint16 bit patterns) for the torch-free ``.pth`` reader.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
import torch
import transformers
from transformers import BltConfig, BltForCausalLM

TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "Grüße aus München: naïve café, 東京タワー, Привет мир! 🙂",
    "def f(x):\n    return x * 2  # doubles\n",
    "Ελληνικά και עברית and 한국어 text, mixed with numbers 12345.",
]
OFFSET, BOS = 4, 1
MAX_PATCH_LENGTH = 4  # second scenario, same weights


def encode(text: str) -> list[int]:
    return [BOS] + [b + OFFSET for b in text.encode("utf-8")]


def build_config(threshold: float) -> BltConfig:
    local = dict(hidden_size=32, num_attention_heads=2, rms_norm_eps=1e-5, intermediate_size=96,
                 max_position_embeddings=256, hidden_size_global=48, cross_attn_k=2,
                 rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    return BltConfig(
        vocab_size=260,
        max_position_embeddings=64,
        patch_in_forward=True,
        patch_size=4,
        patching_mode="entropy",
        patching_threshold=threshold,
        patching_batch_size=1,
        max_patch_length=None,
        local_attention_window_len=16,
        cross_attn_k=2,
        encoder_hash_byte_group_size=[3, 4, 5],
        encoder_hash_byte_group_vocab=61,
        encoder_hash_byte_group_nb_functions=2,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        encoder_config=dict(local, num_hidden_layers=1, cross_attn_all_layers=False),
        decoder_config=dict(local, num_hidden_layers=2, cross_attn_all_layers=True),
        global_config=dict(hidden_size=48, num_attention_heads=4, num_key_value_heads=2,
                           num_hidden_layers=2, rms_norm_eps=1e-5, intermediate_size=128,
                           max_position_embeddings=64,
                           rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
        patcher_config=dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                            num_hidden_layers=2, rms_norm_eps=1e-5, intermediate_size=96,
                            max_position_embeddings=256, sliding_window=32,
                            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
        tie_word_embeddings=False,
    )


def patcher_entropies(model: BltForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    ent, _, _ = model.model.patcher(ids, patch_size=None)
    return ent


def pick_threshold(entropies: np.ndarray) -> float:
    """Middle of the largest gap between the 60th and 85th percentile (mean patch ~3 bytes)."""
    e = np.sort(entropies)
    lo, hi = np.searchsorted(e, np.percentile(e, 60)), np.searchsorted(e, np.percentile(e, 85))
    gaps = np.diff(e[lo:hi + 1])
    i = lo + int(np.argmax(gaps))
    return float((e[i] + e[i + 1]) / 2)


def make_dtype_fixture(out: pathlib.Path) -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    shared = torch.arange(24, dtype=torch.float32)
    tensors = {
        "f32": torch.randn(3, 4, generator=g),
        "f64": torch.randn(2, 3, generator=g, dtype=torch.float64),
        "f16": torch.randn(4, 2, generator=g).half(),
        "bf16": torch.randn(5, 3, generator=g).bfloat16(),
        "i64": torch.arange(-5, 7, dtype=torch.int64).reshape(3, 4),
        "i32": torch.arange(6, dtype=torch.int32),
        "i16": torch.arange(-3, 3, dtype=torch.int16),
        "i8": torch.arange(-4, 4, dtype=torch.int8),
        "u8": torch.arange(250, 256, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
        "transposed": base.t(),                 # strides (1, 5)
        "sliced": base[2:5, 1:4],               # storage offset 11, strides (5, 1)
        "strided": base[::2, ::3],              # strides (10, 3)
        "shared_a": shared[:12].view(3, 4),     # two views of one storage
        "shared_b": shared[12:].view(4, 3),
        "bf16_view": torch.randn(4, 6, generator=g).bfloat16()[:, 1::2],
        "param": torch.nn.Parameter(torch.randn(2, 2, generator=g)),
    }
    torch.save({"model": tensors, "step": 7}, out / "torch_dtypes.pth")
    twins = {}
    for k, v in tensors.items():
        v = v.detach()
        twins[k] = v.view(torch.int16).numpy().view(np.uint16) if v.dtype == torch.bfloat16 \
            else v.contiguous().numpy()
    np.savez(out / "torch_dtypes.npz", **twins)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="tests/data/hf-tiny")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)

    torch.manual_seed(args.seed)
    model = BltForCausalLM._from_config(build_config(threshold=1.0), attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        # A random patcher predicts near-uniform bytes; sharpen it so entropies spread out.
        model.model.patcher.lm_head.weight.mul_(6.0)
    seqs = [torch.tensor([encode(t)]) for t in TEXTS]
    with torch.no_grad():
        all_ent = np.concatenate([patcher_entropies(model, s)[0, 1:].numpy() for s in seqs])
    threshold = pick_threshold(all_ent)
    margin = float(np.min(np.abs(all_ent - threshold)))
    model.config.patching_threshold = threshold
    model.save_pretrained(out, safe_serialization=True)

    reloaded = BltForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    arrays: dict[str, np.ndarray] = {"threshold": np.float64(threshold)}
    with torch.no_grad():
        for i, ids in enumerate(seqs):
            ent, lengths, _ = reloaded.model.patcher(
                ids, patch_size=reloaded.config.patch_size, threshold=threshold,
                max_patch_length=reloaded.config.max_patch_length)
            logits = reloaded(ids, use_cache=False).logits.float()
            logits_given = reloaded(ids, patch_lengths=lengths, use_cache=False).logits.float()
            assert torch.equal(logits, logits_given)
            arrays[f"s{i}_tokens"] = ids[0].numpy().astype(np.int32)
            arrays[f"s{i}_entropies"] = ent[0].numpy().astype(np.float32)
            arrays[f"s{i}_patch_lengths"] = lengths[0].numpy().astype(np.int32)
            arrays[f"s{i}_logits"] = logits[0].numpy()
        batch = torch.stack([seqs[0][0, :40], seqs[1][0, :40]])
        _, blengths, _ = reloaded.model.patcher(batch, patch_size=reloaded.config.patch_size,
                                                threshold=threshold)
        arrays["batch_tokens"] = batch.numpy().astype(np.int32)
        arrays["batch_patch_lengths_hf_raw"] = blengths.numpy().astype(np.int32)
        arrays["batch_logits"] = reloaded(batch, use_cache=False).logits.float().numpy()
        # The same weights with max_patch_length=4: HF splits only the N real bytes (design §16.3).
        reloaded.config.max_patch_length = MAX_PATCH_LENGTH
        for i, ids in enumerate(seqs):
            _, lengths, _ = reloaded.model.patcher(ids, patch_size=reloaded.config.patch_size, threshold=threshold,
                                                   max_patch_length=MAX_PATCH_LENGTH)
            arrays[f"s{i}_patch_lengths_mpl{MAX_PATCH_LENGTH}"] = lengths[0].numpy().astype(np.int32)
            arrays[f"s{i}_logits_mpl{MAX_PATCH_LENGTH}"] = reloaded(ids, use_cache=False).logits.float()[0].numpy()
        _, blengths, _ = reloaded.model.patcher(batch, patch_size=reloaded.config.patch_size, threshold=threshold,
                                                max_patch_length=MAX_PATCH_LENGTH)
        arrays[f"batch_patch_lengths_mpl{MAX_PATCH_LENGTH}"] = blengths.numpy().astype(np.int32)
        arrays[f"batch_logits_mpl{MAX_PATCH_LENGTH}"] = reloaded(batch, use_cache=False).logits.float().numpy()
    np.savez_compressed(out / "expected.npz", **arrays)
    make_dtype_fixture(out)
    meta = {"transformers": transformers.__version__, "torch": torch.__version__, "seed": args.seed,
            "threshold": threshold, "threshold_margin_to_nearest_entropy": margin, "texts": TEXTS,
            "patch_counts": [int((arrays[f"s{i}_patch_lengths"] >= 0).sum()) for i in range(len(TEXTS))]}
    (out / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(meta, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
