"""Default experiment (= ``python -m bltjax.train`` with no arguments; the config lives in the package).

Launch:   python -m bltjax.train --config experiments/default.py        (workdir ./runs/default)
Expected: a 1.7M-parameter BLT (1.05M of it hash embeddings) on the embedded stdlib corpus, 300 steps
          of 8 x 256 bytes with static 4-byte patches; ~2.6 min on a 2-core CPU, bits per byte from 8.6
          down to ~2.3 (train) and val_bpb 2.42 / 1.86 / 1.74 at steps 100 / 200 / 300.
"""

from bltjax.configs.default import get_config, model_config  # noqa: F401
