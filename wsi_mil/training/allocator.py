"""Freed memory stays in the process while models train (glibc's malloc).

A training step allocates and frees activations of tens of MB each (100
stacked ABMIL models on packed bags of 128-d features: ~30 MB per layer
output). glibc's malloc serves every allocation above ``M_MMAP_THRESHOLD``
(128 KiB at start, adapting up to 32 MiB) with fresh pages from ``mmap`` and
unmaps them on ``free``, so each such tensor page-faults anew, every step:
on the 2-core machine of the README, a 30 MB and a 40 MB product computed 20
times took 13.5 ms per pair with 251,000 minor page faults, against 4.9 ms
and 57,000 faults with the thresholds below; the batched small-bag nested CV
is ~6-8% slower without it (``dev_tools/bench_cv.py --small --ablate``).
PyTorch's CPU-tuning guides recommend
jemalloc or tcmalloc for this reason; :func:`reuse_freed_memory` gets the
same from glibc with ``mallopt``, for the duration of a run only.

The peak memory is unchanged (the same tensors live at once); freed memory
is kept for reuse instead of being returned to the system during the run.
Elsewhere than glibc (macOS, musl) it does nothing.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
from collections.abc import Iterator
from functools import cache

from loguru import logger

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: allocations up to this size come from the heap (and are reused) during a run
RUN_MMAP_THRESHOLD = 1 << 30
#: glibc's own upper value of the adaptive mmap threshold, and its matching trim threshold (2x)
GLIBC_MMAP_THRESHOLD_MAX = 32 << 20


_lock = threading.Lock()
_depth = 0  # open contexts, in any thread: the first sets the thresholds, the last one out restores them
_active = False


@cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    glibc = all(hasattr(libc, name) for name in ("gnu_get_libc_version", "mallopt", "malloc_trim"))
    return libc if glibc else None


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[bool]:
    """Inside the context, freed allocations up to 1 GiB stay in the heap for reuse.

    Yields whether it took effect (glibc only). Contexts may nest and overlap
    across threads (a fit inside a run; runs of a threaded multirun): the
    first one in sets the thresholds, the last one out sets them back to
    glibc's adapted values (mmap above 32 MiB, trim above 64 MiB) and returns
    the heap's free memory to the system (``malloc_trim``).
    """
    global _depth, _active
    libc = _glibc()
    with _lock:
        _depth += 1
        if _depth == 1 and libc is not None:
            _active = bool(libc.mallopt(M_MMAP_THRESHOLD, RUN_MMAP_THRESHOLD)) \
                and bool(libc.mallopt(M_TRIM_THRESHOLD, 2 * RUN_MMAP_THRESHOLD))
            if not _active:
                logger.debug("mallopt refused the run's thresholds; freed memory is returned as usual")
        ok = _active
    try:
        yield ok
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _active:
                libc.mallopt(M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD_MAX)
                libc.mallopt(M_TRIM_THRESHOLD, 2 * GLIBC_MMAP_THRESHOLD_MAX)
                libc.malloc_trim(0)
                _active = False
