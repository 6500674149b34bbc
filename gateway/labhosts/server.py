"""One lab host's services: TCP responders, UDP echo, and an SMTP server that delivers to a Maildir.

Responses name the host and port, so a test knows it reached the real peer and not something else:
- TCP: on accept, send `lgw-lab HOST tcp/PORT\\r\\n`, then echo every byte back until EOF.
- UDP: answer each datagram with `lgw-lab HOST udp/PORT ` + the datagram.
- SMTP (aiosmtpd): every accepted message is stored byte-exact as received after dot-unstuffing
  (CRLF line ends kept, so a test can compare it with what was sent or what the gateway rewrote)
  as one file in a Maildir; the envelope goes to `<maildir>.jsonl` with the Maildir key.
The ready file is written once every listener is bound, so the lab can wait for it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import mailbox
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from aiosmtpd.smtp import SMTP, Envelope, Session

BANNER = "lgw-lab {host} {proto}/{port}"


class MaildirHandler:
    """aiosmtpd handler: deliver to a Maildir, log the envelope beside it."""

    def __init__(self, maildir: Path) -> None:
        for sub in ("tmp", "new", "cur"):  # Maildir(create=True) skips them when the folder exists
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        self.maildir = mailbox.Maildir(maildir, create=True)
        self.log = maildir.with_name(maildir.name + ".jsonl")

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        key = self.maildir.add(content)  # tmp/ then rename into new/: readers never see half a file
        record = {
            "key": key,
            "path": str(Path(self.maildir._path) / "new" / key),
            "peer": list(session.peer) if isinstance(session.peer, tuple) else session.peer,
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "size": len(content),
        }
        with self.log.open("a") as f:
            f.write(json.dumps(record) + "\n")
        return "250 OK stored " + key


class _TcpResponder(asyncio.Protocol):
    def __init__(self, banner: bytes) -> None:
        self.banner = banner
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.banner)

    def data_received(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)


class _UdpEcho(asyncio.DatagramProtocol):
    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector datagram transport is not a DatagramTransport subclass on every Python
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.transport is not None:
            self.transport.sendto(self.prefix + data, addr)


def _ports(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p]


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    servers: list[asyncio.AbstractServer] = []
    transports: list[asyncio.BaseTransport] = []
    for port in _ports(args.tcp):
        banner = (BANNER.format(host=args.name, proto="tcp", port=port) + "\r\n").encode()
        servers.append(
            await loop.create_server(functools.partial(_TcpResponder, banner), args.bind, port, reuse_address=True)
        )
    if args.smtp:
        handler = MaildirHandler(Path(args.maildir))
        for port in _ports(args.smtp):
            servers.append(
                await loop.create_server(
                    lambda: SMTP(handler, hostname=args.name, data_size_limit=64 << 20, enable_SMTPUTF8=True),
                    args.bind,
                    port,
                    reuse_address=True,
                )
            )
    for port in _ports(args.udp):
        prefix = (BANNER.format(host=args.name, proto="udp", port=port) + " ").encode()
        transport, _ = await loop.create_datagram_endpoint(
            functools.partial(_UdpEcho, prefix), local_addr=(args.bind, port)
        )
        transports.append(transport)
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        Path(tmp).write_text(f"{os.getpid()}\n")
        os.replace(tmp, args.ready_file)
    await stop.wait()
    for s in servers:
        s.close()
    for t in transports:
        t.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.labhosts", description=__doc__)
    p.add_argument("--name", required=True, help="host name (used in banners)")
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--tcp", default="", help="comma-separated TCP responder ports")
    p.add_argument("--udp", default="", help="comma-separated UDP echo ports")
    p.add_argument("--smtp", default="", help="comma-separated SMTP ports (needs --maildir)")
    p.add_argument("--maildir", help="Maildir that SMTP deliveries go to")
    p.add_argument("--ready-file", help="written (atomically) once every listener is bound")
    args = p.parse_args(argv)
    if args.smtp and not args.maildir:
        p.error("--smtp needs --maildir")
    asyncio.run(serve(args))
    return 0
