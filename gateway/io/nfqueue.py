"""NFQUEUE adapter: opens the compiled binding (gateway._nfq) and reads the kernel's queue stats.

The binding does the per-packet work (batched reads, one verdict per packet, offload marks,
truncation check); this module is the typed entry point the daemon uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.io.iptables import MARK_MASK

if TYPE_CHECKING:  # the binding is imported lazily so `rules` and `stats` work without it
    from gateway._nfq import Queue as _Queue

PROC_QUEUES = Path("/proc/net/netfilter/nfnetlink_queue")


def open_queue(
    queue_num: int, *, fail_open: bool = False, offload: bool = True, max_batch: int = 64, maxlen: int = 8192
) -> _Queue:
    """Bind `queue_num` with the whole-packet copy range and the GSO flag. Raises ImportError when
    the binding is not built, OSError when the kernel refuses (e.g. the queue is bound already)."""
    from gateway import _nfq

    q = _nfq.Queue(queue_num, max_batch=max_batch, maxlen=maxlen, gso=True, fail_open=fail_open)
    q.mark_mask = MARK_MASK
    q.offload = offload
    return q


@dataclass(frozen=True)
class KernelQueueStats:
    """One line of /proc/net/netfilter/nfnetlink_queue."""

    queue_num: int
    portid: int  # netlink port of the listener (0: nobody)
    waiting: int  # packets queued now, waiting for a verdict
    copy_range: int
    queue_dropped: int  # dropped because the queue was full (maxlen)
    user_dropped: int  # dropped because the listener's socket buffer was full


def kernel_queue_stats(path: Path = PROC_QUEUES) -> dict[int, KernelQueueStats]:
    """The kernel's per-queue counters (only queues that have a listener appear there)."""
    out: dict[int, KernelQueueStats] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        f = line.split()
        if len(f) < 8:
            continue
        num = int(f[0])
        out[num] = KernelQueueStats(num, int(f[1]), int(f[2]), int(f[4]), int(f[5]), int(f[6]))
    return out
