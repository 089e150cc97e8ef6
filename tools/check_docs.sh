#!/usr/bin/env bash
# Check that the documentation matches the code: every command in the ```bash blocks of README.md and
# docs/*.md (python -m bltjax.*, bltjax-* console scripts, --config files, --set overrides, scripts),
# every bltjax name in their ```python blocks and every inline `python -m bltjax.*` mention.
# Nothing is run; arguments are parsed by each command's own parser.  Usage: tools/check_docs.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
exec python -m pytest -q -p no:cacheprovider tests/test_docs_commands.py "$@"
