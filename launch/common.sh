# Shared helpers of the launch scripts (sourced, not run).
#
#   DRY_RUN=1  ->  run() prints each command, shell-quoted, one per line, and runs nothing.
# shellcheck shell=bash

DRY_RUN=${DRY_RUN:-0}

# Quote words for a POSIX shell: plain words stay as they are, anything else goes in single quotes.
shquote() {
  local out="" a
  for a in "$@"; do
    if [[ -n $a && $a =~ ^[A-Za-z0-9_./=:,@%+~-]+$ ]]; then
      out+="$a "
    else
      out+="'${a//\'/\'\\\'\'}' "
    fi
  done
  printf '%s\n' "${out% }"
}

# Run a command, or print it under --dry-run.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    shquote "$@"
  else
    "$@"
  fi
}

die() { echo "error: $*" >&2; exit 2; }

# Shell snippet (one line) that leaves a Python 3.12 venv with pip in $1, on any Linux with python3:
# uv (installed with pip into ~/.local) uses the system's python3.12 or downloads a standalone CPython 3.12.
# The TPU VM images ship Python 3.10; jax 0.12 needs 3.12.
python312_venv_snippet() {
  local venv=$1
  printf '%s' "export PATH=\$HOME/.local/bin:\$PATH; " \
    "if ! command -v uv >/dev/null; then python3 -m pip install --user -q uv || python3 -m pip install --user -q --break-system-packages uv; fi; " \
    "{ uv python find 3.12 >/dev/null 2>&1 || uv python install 3.12; } && " \
    "uv venv --seed --allow-existing --python 3.12 $venv && $venv/bin/python --version"
}
