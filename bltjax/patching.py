"""Deprecated alias of :mod:`bltjax.entropy_tools` (the entropy-tools CLI and API), kept for one release.

``python -m bltjax.patching calibrate|plot|precompute`` still runs ``python -m bltjax.entropy_tools``;
new code imports from ``bltjax.entropy_tools``, ``bltjax.calibration``, ``bltjax.entropy_scoring``,
``bltjax.data.documents``, ``bltjax.data.entropy_file`` and ``bltjax.pretrained`` (see CHANGELOG.md).
"""

import sys
import warnings

from bltjax.data.documents import encode_document, read_documents, read_files, sample_documents, stream_windows
from bltjax.entropy_tools import *  # noqa: F403
from bltjax.entropy_tools import __all__ as _tools_all
from bltjax.entropy_tools import main
from bltjax.pretrained import LoadedCheckpoint, open_checkpoint

warnings.warn("bltjax.patching is deprecated: use bltjax.entropy_tools (python -m bltjax.entropy_tools)",
              DeprecationWarning, stacklevel=2)

__all__ = [*_tools_all, "LoadedCheckpoint", "open_checkpoint", "read_files", "read_documents", "sample_documents",
           "encode_document", "stream_windows"]

if __name__ == "__main__":
    from bltjax import hugepages
    from bltjax.cli import run_cli

    hugepages.reexec()
    sys.exit(run_cli(main))
