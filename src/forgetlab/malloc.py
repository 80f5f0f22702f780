"""glibc's malloc told, once a process that trains, to keep the memory a step frees.

A training step frees and allocates again the same large tensors every time: gradients,
autocast's bf16 copies of the weights, an embedding's dense gradient (47 MB a step for
MiniLM's 30k x 384 table). glibc serves a block above its mmap threshold (at most 32 MB) with
a fresh mmap and unmaps it when freed, so each step faults those pages in again, one by one,
and zeroes them. With `M_MMAP_MAX = 0` every block comes from the heap, and with a high
`M_TRIM_THRESHOLD` what is freed stays there for the next step. Peak memory does not change:
the same tensors are live at the peak either way, and a process's memory was already at its
peak once per step.

Measured by benchmarks/malloc_policy.py (2 cores, bf16, MiniLM, alternating processes): see
benchmarks/README.md. FORGETLAB_MALLOC=default keeps glibc's settings (`forgetlab`, or unset:
this policy; any other value is refused by `forgetlab run`, `validate`, `sweep` and
`forgetlab.run`); off glibc (macOS, musl) nothing is done.
"""

from __future__ import annotations

import ctypes
import os
import sys

from forgetlab.errors import ConfigError

ENV = "FORGETLAB_MALLOC"
CHOICES = ("forgetlab", "default")  # unset: forgetlab's
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's <malloc.h>
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: the largest, ~2 GiB kept free at the top

_done = False


def _value() -> str:
    return os.environ.get(ENV, "").strip().lower()


def check_setting() -> None:
    """ConfigError (one line) for a FORGETLAB_MALLOC value that is neither choice."""
    if _value() not in ("", *CHOICES):
        raise ConfigError(
            f"{ENV}={os.environ[ENV]!r} is not one of {', '.join(CHOICES)} (unset: forgetlab)"
        )


def keep_freed_memory() -> bool:
    """Apply the policy once in this process (before the first stage trains); True when it
    was applied now."""
    global _done
    if _done:
        return False
    _done = True
    if _value() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl's mallopt does nothing
    except (OSError, AttributeError):
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
