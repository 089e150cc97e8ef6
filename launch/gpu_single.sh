#!/usr/bin/env bash
# One GPU host (or Colab): a Python 3.12 venv with the CUDA wheels, then train.
#
#   launch/gpu_single.sh [--dry-run] [CONFIG] [WORKDIR] [--set k=v ...]
#   launch/gpu_single.sh experiments/colab_gpu.py gs://BUCKET/runs/gpu --set steps=2000
#
# CONFIG defaults to experiments/colab_gpu.py, WORKDIR to runs/gpu (a gs:// path works too).
# The venv's Python 3.12 comes from uv (pip-installed into ~/.local), which downloads one if needed.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=launch/common.sh
source "$here/common.sh"
pos=() extra=()
while (($#)); do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --set) extra+=(--set "${2:?--set KEY=VALUE}"); shift ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
    -*) extra+=("$1") ;;
    *) pos+=("$1") ;;
  esac
  shift
done
config=${pos[0]:-experiments/colab_gpu.py} workdir=${pos[1]:-runs/gpu}
run cd "$(cd "$here/.." && pwd)"
if [[ $DRY_RUN == 1 || ! -x .venv/bin/python ]]; then
  run bash -c "$(python312_venv_snippet .venv)"
fi
run .venv/bin/pip install -q -e '.[cuda]'
run .venv/bin/python -c 'import jax; print(jax.devices())'
run .venv/bin/python -m bltjax.train --config "$config" --workdir "$workdir" "${extra[@]}"
