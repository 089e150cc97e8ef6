"""Default experiment (= ``python -m bltjax.train`` with no arguments; the config lives in the package).

Launch:   python -m bltjax.train --config experiments/default.py        (workdir ./runs/default)
Expected: a ~1M-parameter BLT on the embedded stdlib corpus, 300 steps of 8 x 256 bytes with static
          4-byte patches; finishes in a few minutes on a 2-core CPU, training bits per byte falling
          from ~8 to about 3 (see the package module for the details).
"""

from bltjax.experiments_default import get_config, model_config  # noqa: F401
