"""The pruned RNN-T loss backend: k2 when it imports, fast_rnnt otherwise.

k2 has no PyPI build for current torch; fast_rnnt is the same code by the same
authors (k2's ``rnnt_loss_smoothed``, ``get_rnnt_prune_ranges``, ``do_rnnt_pruning``,
``rnnt_loss_pruned``), built from its sdist by ``tools/install.sh``. Everything in
q4asr imports the loss functions from here, never from k2 or fast_rnnt directly.
"""

from __future__ import annotations

try:  # pragma: no cover - depends on the machine
    import k2 as _backend

    BACKEND = "k2"
except ImportError:
    import fast_rnnt as _backend

    BACKEND = "fast_rnnt"

rnnt_loss = _backend.rnnt_loss
rnnt_loss_simple = _backend.rnnt_loss_simple
rnnt_loss_smoothed = _backend.rnnt_loss_smoothed
rnnt_loss_pruned = _backend.rnnt_loss_pruned
get_rnnt_prune_ranges = _backend.get_rnnt_prune_ranges
do_rnnt_pruning = _backend.do_rnnt_pruning

__all__ = [
    "BACKEND",
    "rnnt_loss",
    "rnnt_loss_simple",
    "rnnt_loss_smoothed",
    "rnnt_loss_pruned",
    "get_rnnt_prune_ranges",
    "do_rnnt_pruning",
]
