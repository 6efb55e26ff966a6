"""Keep freed memory in the process for the next step, instead of handing it back to the OS.

glibc's malloc serves each block above its mmap threshold (128 KiB at first, raised as blocks are freed, at
most 32 MiB) with a fresh mmap and unmaps it when freed, and trims the heap's free top above its trim
threshold. A training step allocates and frees the same large activations every time, so with the defaults
each step faults them in again, page by page. With the thresholds below both our step and HF's fault far less
and run faster, HF's most (its full-vocabulary logits); the figures: docs/speed.md, "Where it comes from".

Nothing changes in what is computed. The cost is that the process keeps its peak heap until it exits.
Elsewhere (macOS, Windows, musl) this is a no-op.
"""
from __future__ import annotations

import ctypes
import sys

# blocks up to 256 MiB come from the heap (HF's full-vocabulary logits at the bench's MLM shape are 134 MiB),
# and the heap keeps up to 1 GiB of free space at its top
MMAP_THRESHOLD = 256 * 2**20
TRIM_THRESHOLD = 2**30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (glibc's malloc.h)


def keep_freed_memory() -> bool:
    """Raise this process's glibc malloc thresholds (see the module docstring); whether it took effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process runs on
        libc.gnu_get_libc_version  # glibc only (musl's mallopt is a stub that ignores what it is given)
    except (OSError, AttributeError):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def environment() -> dict[str, str]:
    """The same thresholds for a child process, as the environment glibc reads when it starts (used for the
    bench's timing workers, whichever checkout they run)."""
    return {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}

