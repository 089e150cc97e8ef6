#!/usr/bin/env bash
# GPU check (one H100 / H200, under 5 minutes): bf16 train-step MFU of a ~1B BLT with cuDNN vs XLA
# attention (same outputs checked), forward and cached-generation bytes/s of the released-size model.
#
#   bash benchmarks/gpu_check.sh [--out FILE] [gpu_check.py options]    # writes benchmarks/results/gpu_check.json
#   bash benchmarks/gpu_check.sh --dry-run                               # CPU, tiny shapes, same code path
#
# Python: $PYTHON, else .venv/bin/python, else python3 (it needs bltjax with jax[cuda13]: pip install -e '.[cuda]').
# Exit code 1 when cuDNN and XLA attention disagree; the MFU target (>= 50 %) is reported, not enforced.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py=${PYTHON:-}
if [[ -z $py ]]; then
  if [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ " $* " == *" --dry-run "* ]]; then
  export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
  exec "$py" benchmarks/gpu_check.py "$@"
fi
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
else
  echo "warning: no nvidia-smi; running on whatever backend JAX finds" >&2
fi
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}  # JAX's default is 0.75
"$py" -c 'import jax; print("jax", jax.__version__, jax.devices())'
exec timeout 600 "$py" benchmarks/gpu_check.py "$@"
