"""The SMTP machine against a real peer: aiosmtpd as the server, smtplib or a raw socket as the
client, a recording TCP relay in between. What the machine extracts as message content must be
byte-identical to what the server received, smuggling vectors included."""

from __future__ import annotations

import smtplib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gateway.smtp import DataChunk, DataEnd, Event, Refuse, Side, SMTPConnection, TransactionEnd

aiosmtpd_controller = pytest.importorskip("aiosmtpd.controller")


class _Sink:
    def __init__(self) -> None:
        self.box: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.box.append(envelope.original_content)
        return "250 OK"


class _Relay:
    """Accepts one connection, relays it to the server and records (side, bytes) in order."""

    def __init__(self, server_port: int) -> None:
        self.server_port = server_port
        self.log: list[tuple[Side, bytes]] = []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _pump(self, src: socket.socket, dst: socket.socket, side: Side) -> None:
        try:
            while data := src.recv(65536):
                with self.lock:
                    self.log.append((side, data))
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the other side is gone; the recording is complete

    def _run(self) -> None:
        c, _ = self.sock.accept()
        s = socket.create_connection(("127.0.0.1", self.server_port))
        t = threading.Thread(target=self._pump, args=(c, s, Side.CLIENT), daemon=True)
        t.start()
        self._pump(s, c, Side.SERVER)
        t.join(5)
        c.close()
        s.close()
        self.sock.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def peer() -> Iterator[tuple[_Sink, Callable[[], _Relay]]]:
    sink = _Sink()
    ctl = aiosmtpd_controller.Controller(sink, hostname="127.0.0.1", port=_free_port())
    ctl.start()
    try:
        yield sink, lambda: _Relay(ctl.port)
    finally:
        ctl.stop()


def _replay(log: list[tuple[Side, bytes]]) -> list[Event]:
    m = SMTPConnection()
    events: list[Event] = []
    for side, data in log:
        events += m.receive_client(data) if side is Side.CLIENT else m.receive_server(data)
    return events


def _messages(events: list[Event]) -> list[bytes]:
    out: list[bytes] = []
    cur = bytearray()
    for e in events:
        if isinstance(e, DataChunk):
            cur += e.data
        elif isinstance(e, DataEnd):
            out.append(bytes(cur))
            cur.clear()
    return out


def test_smtplib_to_aiosmtpd_content_identical(peer: tuple[_Sink, Callable[[], _Relay]]) -> None:
    sink, relay_factory = peer
    relay = relay_factory()
    body = b"Subject: x\r\n\r\n.starts with a dot\r\n..two\r\n.\r\nnot the end above\r\n" + (b"y" * 900 + b"\r\n") * 6
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
        client.sendmail("a@example.com", ["b@lg.jp", "c@lg.jp"], body)
    relay.thread.join(10)
    events = _replay(relay.log)
    assert _messages(events) == sink.box == [body]
    assert any(isinstance(e, TransactionEnd) and e.accepted for e in events)


@pytest.mark.parametrize("vector", [b"\n.\r\n", b"\n.\n", b"\r\n.\n", b"\r.\r\n"], ids=repr)
def test_smuggling_vector_same_content_as_server(peer: tuple[_Sink, Callable[[], _Relay]], vector: bytes) -> None:
    sink, relay_factory = peer
    relay = relay_factory()
    msg = b"Subject: a\r\n\r\nTesting" + vector + b"MAIL FROM:<evil@x>\r\nRCPT TO:<v@lg.jp>\r\nDATA\r\nNO SMUGGLING\r\n"
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as s:
        f = s.makefile("rb")

        def reply() -> bytes:
            lines = b""
            while True:
                line = f.readline()
                lines += line
                if len(line) < 4 or line[3:4] != b"-":
                    return lines

        reply()
        # pipelined envelope, then DATA
        s.sendall(b"EHLO relay\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@lg.jp>\r\n")
        reply(), reply(), reply()
        s.sendall(b"DATA\r\n")
        assert reply().startswith(b"354")
        s.sendall(msg + b".\r\n")
        reply()
        s.sendall(b"QUIT\r\n")
        reply()
        f.close()  # the socket's fd stays open while its file object is
    relay.thread.join(10)
    events = _replay(relay.log)
    assert len(sink.box) == 1 and b"NO SMUGGLING" in sink.box[0]  # the server kept one message ...
    assert _messages(events) == sink.box  # ... and we saw exactly its content (same unstuffing)
    assert any(isinstance(e, Refuse) for e in events)  # but policy refuses the look-alike
