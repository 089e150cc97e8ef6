"""The BLT model as pure functions over parameter pytrees (no framework classes).

``blt`` (init / forward / patch lengths) is built from ``local_encoder``, ``global_model``,
``local_decoder``, ``cross_attention``, ``transformer`` / ``attention`` / ``layers`` and ``hashing``;
``entropy_model`` is the small byte LM that drives entropy patching; ``decode`` is the KV-cached
incremental decoder used by ``bltjax.generation``.

**Shape-suffix naming.**  An array's name ends with one letter per axis, in order, so shapes can be
checked by reading: ``tokens_bn`` is ``[batch, bytes]``, ``kv_btkh`` is ``[batch, time, kv heads,
head dim]``, ``lengths_bp`` is ``[batch, patches]``.  Letters:

====  ==========================================  ====  ==========================================
b     batch (rows)                                p     patches (global positions)
n, t  bytes / tokens (local positions, time)      l     window length (evaluation rows)
d     model width (``dE``, ``dD``, ``dG``)        v     vocabulary (260)
h     heads, or head dim after a head axis        k     key/value heads, or cross-attention slots
q     queries (e.g. patch x k slots)              c     cache slots (ring buffer columns)
r     rows of a host-side table                   f     any trailing feature axes
====  ==========================================  ====  ==========================================

A ``1`` after a letter means "one more" (``starts_bn1`` is ``[B, N+1]``); a bare ``_b`` is one value
per row (``lengths_b``).  Functions named ``*_row`` work on one row (no batch axis) and are vmapped.
"""
