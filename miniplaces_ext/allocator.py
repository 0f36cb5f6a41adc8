"""Keeping freed memory for the next batch.

glibc's malloc hands a block larger than its mmap threshold (128 KiB, raised on the fly up to 32 MiB)
straight from the OS and unmaps it when freed, and returns the free top of its heap once it exceeds
the trim threshold. Every batch of a network then faults its activations in page by page again: 4 KiB
at a time, each page zeroed by the kernel. ResNet-18 at batch 32, eval, images/s with glibc's defaults
-> with this setting (Intel Xeon with AMX, 2 threads, same process for all paths): bfloat16 torch eager
261 -> 355, torch.compile(freezing) 576 -> 617, ours fused 402 -> 461; float32 torch eager 68 -> 87,
torch.compile 89 -> 98, ours fused 137 -> 156. The fix is the one PyTorch's CPU performance guide
gives with jemalloc or tcmalloc, made here without preloading a library: tell glibc to serve
allocations up to 1 GiB from its heap and keep what is freed, so that the next batch reuses the same
pages. This is a process-wide setting, so the library never makes it on its own: the commands call
:func:`reuse_freed_memory` at start-up, and a script may.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

_LOG = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 1 << 30


def reuse_freed_memory() -> bool:
    """Makes glibc's malloc keep freed memory for reuse instead of returning it to the OS.

    Blocks up to 1 GiB come from the heap rather than fresh mappings, and up to 1 GiB of free heap
    is kept. The process's peak memory stays reserved after it is freed. Returns whether the setting
    was made: False, and nothing changed, off Linux or on a C library without glibc's ``mallopt``.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        _LOG.debug("reuse_freed_memory: no mallopt in this C library; malloc left as it is")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES) == 1 and mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES) == 1
    _LOG.debug("reuse_freed_memory: mallopt %s", "set" if done else "refused the thresholds")
    return done
