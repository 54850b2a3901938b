"""A step's time from its operators: the CPU issuing them and the GPU running them, overlapped.

Eager PyTorch issues kernels asynchronously: the CPU runs ahead while the GPU works, and the
GPU idles whenever the CPU has not yet issued the next kernel. With ``host_i`` the CPU time to
issue operator ``i`` and ``device_i`` its GPU time::

    issued_i = issued_{i-1} + host_i
    done_i   = max(done_{i-1}, issued_i) + device_i      (synchronising operators: the CPU
                                                          then waits, issued_i = done_i)
    step     = max(issued_n, done_n)

A step of large kernels is as long as its GPU time; one of many small kernels (small models,
small micro-batches, selective checkpointing's Python) is as long as its CPU time; most steps
are some of each, and this is where a sum of either alone goes wrong.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["overlapped_seconds"]


def overlapped_seconds(ops: Iterable[tuple[float, float, bool]]) -> float:
    """The time of a sequence of ``(host_s, device_s, synchronises)`` operators."""
    issued = done = 0.0
    for host, device, synchronises in ops:
        issued += host
        done = max(done, issued) + device
        if synchronises:
            issued = done
    return max(issued, done)
