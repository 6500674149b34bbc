"""Typed stub of the compiled NFQUEUE binding (cython_ext/nfq.pyx)."""

from collections.abc import Callable
from typing import Any

LATENCY_BOUNDS_NS: tuple[int, ...]

class Queue:
    queue_num: int
    mark_mask: int
    offload_mark: int
    offload: bool
    # INSPECT packets: inspect(packet_id, payload, decision); the verdict comes via verdict()
    inspect: Callable[[int, bytes, Any], None] | None
    last_error: object
    def __init__(
        self,
        queue_num: int,
        *,
        max_batch: int = 64,
        maxlen: int = 8192,
        gso: bool = True,
        fail_open: bool = False,
        rcvbuf: int = 16 << 20,
        copy_range: int = 0xFFFF,
    ) -> None: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...
    def forget_interfaces(self) -> None: ...
    def process(self, decide: Callable[[bytes, int, str | None, str | None], Any], wait_ms: int = 0) -> int: ...
    def verdict(self, packet_id: int, accept: bool, payload: bytes | None = None) -> bool: ...
    def deferred(self) -> list[int]: ...
    def stats(self) -> dict[str, int]: ...
    def by_verdict_reason(self) -> dict[tuple[int, int], int]: ...
    def latency(self) -> tuple[list[float], list[int], float]: ...
