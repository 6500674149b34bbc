"""Typed stub of the compiled NFQUEUE binding (cython_ext/nfq.pyx)."""

from collections.abc import Callable
from typing import Any

LATENCY_BOUNDS_NS: tuple[int, ...]

class Queue:
    queue_num: int
    mark_mask: int
    offload_mark: int
    offload: bool
    inspect: Callable[[bytes, Any], bool] | None
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
    def process(self, decide: Callable[[bytes, int, str | None, str | None], Any]) -> int: ...
    def stats(self) -> dict[str, int]: ...
    def by_verdict_reason(self) -> dict[tuple[int, int], int]: ...
    def latency(self) -> tuple[list[float], list[int], float]: ...
