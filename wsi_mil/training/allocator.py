"""Freed memory stays in the process while models train (glibc's malloc).

A training step allocates and frees activations of tens of MB each (100
stacked ABMIL models on packed bags of 128-d features: ~30 MB per layer
output). glibc's malloc serves every allocation above ``M_MMAP_THRESHOLD``
(128 KiB at start, adapting up to 32 MiB) with fresh pages from ``mmap`` and
unmaps them on ``free``, so each such tensor page-faults anew, every step:
on the 2-core machine of the README, a 30 MB and a 40 MB product computed 20
times took 13.5 ms per pair with 251,000 minor page faults, against 4.9 ms
and 57,000 faults with the thresholds below (``dev_tools/bench_cv.py --small``:
the whole nested CV ~10-20% faster). PyTorch's CPU-tuning guides recommend
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
from collections.abc import Iterator
from functools import cache

from loguru import logger

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: allocations up to this size come from the heap (and are reused) during a run
RUN_MMAP_THRESHOLD = 1 << 30
#: glibc's own upper value of the adaptive mmap threshold, and its matching trim threshold (2x)
GLIBC_MMAP_THRESHOLD_MAX = 32 << 20


_depth = 0  # open contexts (re-entrant: only the outermost one sets and restores)
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

    Yields whether it took effect (glibc only). On exit the thresholds go to
    glibc's adapted values (mmap above 32 MiB, trim above 64 MiB) and the
    heap's free memory is returned to the system (``malloc_trim``).
    """
    global _depth, _active
    libc = _glibc()
    if _depth:  # nested (a fit inside a run): the outer context holds the thresholds
        _depth += 1
        try:
            yield _active
        finally:
            _depth -= 1
        return
    ok = libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, RUN_MMAP_THRESHOLD)) \
        and bool(libc.mallopt(M_TRIM_THRESHOLD, 2 * RUN_MMAP_THRESHOLD))
    if libc is not None and not ok:
        logger.debug("mallopt refused the run's thresholds; freed memory is returned as usual")
    _depth, _active = 1, ok
    try:
        yield ok
    finally:
        _depth = 0
        if ok:
            libc.mallopt(M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD_MAX)
            libc.mallopt(M_TRIM_THRESHOLD, 2 * GLIBC_MMAP_THRESHOLD_MAX)
            libc.malloc_trim(0)
