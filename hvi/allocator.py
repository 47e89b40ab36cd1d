"""Memory-allocator settings for meta-training on CPU (glibc malloc on Linux).

A meta-training step allocates and frees the same tens of megabytes of
activations in every inner step, in every worker thread of
:mod:`hvi.parallel`. glibc's malloc gives free memory at the top of a heap
back to the kernel once it exceeds the trim threshold (by default twice the
largest block it has unmapped so far, a few MB here), so the next inner step
gets those pages back one page fault at a time, each zero-filled by the
kernel. On the benchmark's first-order ``bayes_unet`` step with 8 tasks on 2
cores that is about 68,000 minor page faults (280 MB) and 0.21 s of system
CPU time per step; with :func:`tune_allocator` it is a few hundred faults and
4-10 ms (see docs/performance.md, "The allocator").

PyTorch's performance-tuning guide gives the same advice for CPU training in
the form "preload jemalloc or tcmalloc"; this is the glibc equivalent, set
from Python while the process runs. It changes a process-wide setting, so the
library never calls it on import: the ``hvi`` CLI calls it for CPU runs, and
scripts call it once at start-up.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["tune_allocator"]

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses mmap thresholds above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit).
_MAX_MMAP_THRESHOLD_MB = 32
_MAX_TRIM_THRESHOLD_MB = 2047


def tune_allocator(trim_threshold_mb: int = 256, mmap_threshold_mb: int = 32) -> bool:
    """Keeps freed memory in the process instead of returning it to the kernel.

    Sets glibc's ``M_TRIM_THRESHOLD`` (free memory an arena keeps before
    returning its top to the kernel) and ``M_MMAP_THRESHOLD`` (allocations at
    least this large get their own mapping, returned on free). Setting either
    turns off glibc's dynamic thresholds, so both are set. The cost: up to
    ``trim_threshold_mb`` of freed memory per arena (one per thread) stays
    resident between steps, so each thread keeps its own high-water mark. On
    the benchmark's first-order step the peak RSS grew by 22 MB (4%) at 8
    tasks and by about 1.5 MB at 1 task.

    Args:
        trim_threshold_mb: Freed memory an arena keeps, in MiB (default 256).
        mmap_threshold_mb: Allocations this large or larger are mapped on
            their own, in MiB (default 32, the largest glibc accepts).

    Returns:
        True if the settings were applied; False where there is no glibc
        ``mallopt`` (macOS, Windows, musl-based Linux), where nothing changes.

    Raises:
        ValueError: If a threshold is out of range.
    """
    if not 1 <= mmap_threshold_mb <= _MAX_MMAP_THRESHOLD_MB:
        raise ValueError(
            f"mmap_threshold_mb must be in 1..{_MAX_MMAP_THRESHOLD_MB} (glibc's limit), got {mmap_threshold_mb!r}."
        )
    if not 1 <= trim_threshold_mb <= _MAX_TRIM_THRESHOLD_MB:
        raise ValueError(
            f"trim_threshold_mb must be in 1..{_MAX_TRIM_THRESHOLD_MB} (mallopt takes a C int of bytes), "
            f"got {trim_threshold_mb!r}."
        )
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, mmap_threshold_mb << 20) == 1
    return ok and mallopt(_M_TRIM_THRESHOLD, trim_threshold_mb << 20) == 1


def _glibc_mallopt():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # AttributeError outside glibc (musl's mallopt is a no-op)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt
