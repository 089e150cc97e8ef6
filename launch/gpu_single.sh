#!/usr/bin/env bash
# One GPU host (or Colab): install with CUDA wheels and train.
#   launch/gpu_single.sh [experiments/colab_gpu.py] [workdir] [--set k=v ...]
set -euo pipefail
config=${1:-experiments/colab_gpu.py}; workdir=${2:-runs/gpu}; shift $(( $# > 2 ? 2 : $# ))
cd "$(dirname "$0")/.."
[ -d .venv ] || python3.12 -m venv .venv
.venv/bin/pip install -q -e '.[cuda]'
.venv/bin/python -c "import jax; print(jax.devices())"
exec .venv/bin/python -m bltjax.train --config "$config" --workdir "$workdir" "$@"
