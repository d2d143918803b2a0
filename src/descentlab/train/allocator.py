"""Keep freed memory in the process, so a training step does not page-fault
its activations back in from the kernel every step.

glibc's malloc serves large requests (above its ``M_MMAP_THRESHOLD``) with
fresh ``mmap``s and returns the top of its heap to the kernel once more than
``M_TRIM_THRESHOLD`` is free there. A batched step allocates activations R
times a single run's (4 MB each for 16 digits-CNN runs at batch 64) and frees
them at the end of the step; with glibc's adaptive defaults much of that is
returned and faulted in again the next step. Measured (``python
benchmarks/allocator.py``, benchmarks/results/allocator.md; each setting its
own process, interleaved): 16 stacked digits-CNN runs, 4,160 minor faults and
34.0 ms a step with glibc's defaults, 51 faults and 27.9 ms with both
thresholds raised (peak RSS 505 vs 509 MB); a single run's step (3.1 vs 3.0
ms) and 32 stacked MLP runs (2.85 vs 2.75 ms) hardly change. Both thresholds
are needed: either one alone still faulted 3,000-12,000 pages a step.

``keep_freed_memory()`` raises both thresholds for the rest of the process
(they are process-wide settings of the C library; a training job is its own
process). Elsewhere than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

__all__ = ["keep_freed_memory"]

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Requests up to 1 GiB come from the heap; up to 1 GiB free at its top stays there.
THRESHOLD_BYTES = 1 << 30

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; whether they are raised."""
    global _applied
    if _applied is None:
        _applied = _raise_thresholds()
    return _applied


def _raise_thresholds() -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        raised = bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES)) and bool(libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD_BYTES))
    except (OSError, AttributeError) as err:  # no loadable libc or no mallopt: glibc's defaults stay
        log.debug("keep_freed_memory: %s", err)
        return False
    if not raised:
        log.debug("keep_freed_memory: mallopt refused a threshold of %d bytes", THRESHOLD_BYTES)
    return raised
