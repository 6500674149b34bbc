"""Typed stub of the compiled fast path (cython_ext/fastpath.pyx, built as gateway._fastpath).

Same API and semantics as gateway.fastpath.reference (the specification); see docs/design.md.
"""

from array import array

from gateway.fastpath.common import CompiledPolicy, Decision, Limits, RawEvent

Buffer = bytes | bytearray | memoryview

class Engine:
    def __init__(self, policy: CompiledPolicy, limits: Limits | None = None) -> None: ...
    def set_policy(self, policy: CompiledPolicy) -> None: ...
    @property
    def policy(self) -> CompiledPolicy: ...
    @property
    def limits(self) -> Limits: ...
    @property
    def flow_count(self) -> int: ...
    def counters(self) -> dict[str, int]: ...
    def pop_events(self) -> list[RawEvent]: ...
    def expire(self, now_us: int) -> int: ...
    def decide(self, packet: Buffer, ts_us: int, in_if: str | None = None, out_if: str | None = None) -> Decision: ...
    def decide_frames(
        self,
        buf: Buffer,
        offsets: array[int],
        lengths: array[int],
        ts_us: array[int],
        linktype: int,
        out: bytearray,
        start: int = 0,
    ) -> int: ...

def scan_pcap_records(
    buf: Buffer,
    start: int,
    nanosecond: bool,
    swapped: bool,
    offsets: array[int],
    lengths: array[int],
    ts_us: array[int],
    orig_lengths: array[int],
) -> int: ...
def inet_checksum(data: bytes) -> int: ...
