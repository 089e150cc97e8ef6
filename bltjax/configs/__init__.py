"""Packaged experiment configs: ``default`` (what ``python -m bltjax.train`` runs) and ``paper`` (the
paper's Table 10 sizes, selected by ``experiments/blt_paper.py:<size>``)."""
