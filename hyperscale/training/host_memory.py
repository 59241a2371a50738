"""Host memory that freed tensors leave behind (glibc on Linux; a no-op elsewhere).

glibc keeps blocks a process frees for later reuse instead of handing them back to the operating system: its
threshold for serving a block from its own mapping (and unmapping it on free) grows with every large block
freed, up to 32 MiB. Building a model under ``zero.Init`` and ZeRO-3's per-layer gathers free thousands of large
blocks, so a CPU rank's resident memory grows far past what it holds live (measured on t5-v1_1-large, 2 ranks,
ZeRO-3, bf16: 3.2 GB resident in a training step against 1.6 GB live; see ``benchmarks/NOTES.md``, "The 3B path").
"""
from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameter (glibc's malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 20  # blocks of 1 MiB and more: mapped on allocation, unmapped when freed


def _libc() -> "ctypes.CDLL | None":
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # another C library (musl): nothing to tune
        return None


def release_freed_memory() -> None:
    """Hand the heap memory freed so far back to the operating system (``malloc_trim``)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def return_large_blocks_eagerly() -> None:
    """For the rest of this process, serve blocks of ``MMAP_THRESHOLD_BYTES`` and more from their own mappings, so
    that freeing one returns it to the operating system at once. Process-wide: only the command-line entry points
    call it (``python -m hyperscale.train`` / ``hyperscale train``), never the Python API."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
