"""Freed CPU memory kept in the process, so that each training step reuses the pages of the one before.

glibc's `malloc` serves large requests (above 32 MB at most) with fresh `mmap` pages and returns them to the system
on `free`. A CPU training step allocates its large activations and gradients anew every step (the main job's ResNet
stem alone has several 64 MB tensors), so every step pays the kernel to map and zero those pages again. With
`M_MMAP_MAX = 0` every request comes from the heap, and with a high `M_TRIM_THRESHOLD` freed memory stays there for
the next step: the main job's step runs about 10-15% faster on a 2-core CPU (`benchmarks/main_job_step.py`). The
cost is that the peak of the run stays resident until the process ends. This is what allocators such as jemalloc
or tcmalloc, preloaded, give CPU training too, without installing anything.

Python's own objects are the other side: a corpus's columns, a sampler's plan and a token cache are millions of
long-lived objects, and each full pass of the cyclic garbage collector traverses them all (~0.22 s in the main job's
training loop). `paused_gc` keeps the collector off while they are built, `frozen_gc` keeps what exists when training
starts out of its passes.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import platform
import sys
from collections.abc import Iterator

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
INT_MAX = 2**31 - 1
# glibc's defaults once its dynamic threshold has risen to its ceiling: requests from 32 MB up are mapped, and free
# memory above twice that at the top of the heap is returned.
DEFAULT_MMAP_THRESHOLD_MAX = 32 * 2**20
DEFAULT_MMAP_MAX = 65536


def keep_freed_memory(keep: bool = True) -> bool:
    """Makes the process's `malloc` serve large requests from its heap and keep freed memory there for reuse.

    Process-wide; a no-op outside Linux with glibc.

    Args:
        keep (`bool`, *optional*, defaults to `True`): False goes back to glibc's behaviour for large requests
            (mapped from 32 MB up, freed memory returned), e.g. to time both in one process.

    Returns:
        `bool`: whether the setting took effect (False where the C library is not glibc).
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if keep:
        settings = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: INT_MAX}
    else:
        settings = {M_MMAP_MAX: DEFAULT_MMAP_MAX, M_MMAP_THRESHOLD: DEFAULT_MMAP_THRESHOLD_MAX,
                    M_TRIM_THRESHOLD: 2 * DEFAULT_MMAP_THRESHOLD_MAX}
    # mallopt returns 1 on success, 0 on error.
    return all([bool(mallopt(option, value)) for option, value in settings.items()])


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Keeps Python's cyclic garbage collector off within the block, for building many objects that all stay alive.

    None of them is garbage, yet every collection the allocations trigger would traverse them all: the main job's
    trainer builds 2-5 s faster on a 2-core CPU. Reference counting still frees what goes out of use; the collector's
    previous state comes back on leaving, also on an exception.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextlib.contextmanager
def frozen_gc() -> Iterator[None]:
    """Leaves every object alive on entering (corpus, caches, model) out of the collector's passes within the block.

    The collector keeps running for what the block creates; its full passes no longer traverse the frozen objects
    (`gc.freeze`), which took ~0.22 s each in the main job's training loop. On leaving they are collectable again
    (`gc.unfreeze`), so nothing stays frozen past the block. Where objects were frozen already on entering (by an
    enclosing block, or the caller's own `gc.freeze`), the block leaves them so: `gc.unfreeze` would release all.
    """
    outermost = gc.get_freeze_count() == 0
    gc.freeze()
    try:
        yield
    finally:
        if outermost:
            gc.unfreeze()


__all__ = ["frozen_gc", "keep_freed_memory", "paused_gc"]
