"""Reads of tensors that live on the host by design, marked so that the host-sync count leaves them out.

On a GPU every read of a tensor's value by Python waits for the kernels queued before it; a training step should
make none (``jepa_platform.testing.host_syncs`` counts them on the CPU). Some tensors are on the host by design (a
flag reduced over a gloo group, a data position in a batch before it moves): code that reads them says so with
:func:`host_side`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_local = threading.local()


@contextlib.contextmanager
def host_side() -> Iterator[None]:
    """Marks reads of tensors that live on the host by design (they are not syncs on a GPU)."""
    depth = getattr(_local, "host_side", 0)
    _local.host_side = depth + 1
    try:
        yield
    finally:
        _local.host_side = depth


def in_host_side() -> bool:
    """Whether the calling thread is inside :func:`host_side`."""
    return bool(getattr(_local, "host_side", 0))
