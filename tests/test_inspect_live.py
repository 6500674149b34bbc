"""Live: a real SMTP client (smtplib) -> a gateway namespace whose FORWARD queue is served by the
NFQUEUE binding + LiveMailInspector (deferred verdicts, rewritten payloads, raw-socket injection)
-> a real SMTP server (aiosmtpd) that stores the raw content it received.

The classifier is the test fake (tests/inspect_helpers.py); the daemon end to end with the real
sanitizers is the lab's job (tests/test_e2e_zones.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from inspect_helpers import FakeClassifier, FakeProfile, MemoryStore, Original
from test_inspect import DOCM, EXE, mail

pytestmark = [pytest.mark.root, pytest.mark.slow]

if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("iptables"):
    pytest.skip("needs root, iproute2 and iptables", allow_module_level=True)
try:
    import gateway._nfq
except ImportError:
    pytest.skip("gateway._nfq is not built", allow_module_level=True)

from gateway.fastpath.common import CompiledPolicy  # noqa: E402
from gateway.inspect.live import LiveMailInspector, QuarantineWriter  # noqa: E402
from gateway.lab import netns  # noqa: E402

P = f"lgw-insp{os.getpid() % 10000}"  # lgw-: the project's cleanup finds leftovers by prefix
C, G, S = f"{P}-c", f"{P}-g", f"{P}-s"
CLIENT, SERVER = "198.19.40.25", "198.18.20.25"
QUEUE = 4242

SERVER_PY = r"""
import asyncio, sys, pathlib
from aiosmtpd.controller import Controller
out = pathlib.Path(sys.argv[2])
class H:
    n = 0
    async def handle_DATA(self, server, session, envelope):
        H.n += 1
        (out / f"{H.n}.eml").write_bytes(envelope.original_content)
        return "250 2.0.0 stored"
c = Controller(H(), hostname=sys.argv[1], port=25)
c.start()
(out / "ready").write_text("1")
import time
while True: time.sleep(3600)
"""


class SlowStore(MemoryStore):
    """A put that takes as long as a slow disk's fsyncs: the end of DATA arrives before it ends."""

    def put(self, original: Original, meta: Any, qid: str | None = None, sha256: str | None = None) -> str:
        time.sleep(0.2)
        return super().put(original, meta, qid, sha256)


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=20)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    mails = tmp_path_factory.mktemp("maildir")
    for ns in (C, G, S):
        sh("ip", "netns", "add", ns)
    srv = None
    try:
        sh("ip", "link", "add", "c0", "netns", C, "type", "veth", "peer", "name", "gc", "netns", G)
        sh("ip", "link", "add", "s0", "netns", S, "type", "veth", "peer", "name", "gs", "netns", G)
        for ns, dev, addr, gw in ((C, "c0", CLIENT, "198.19.40.254"), (S, "s0", SERVER, "198.18.20.254")):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "mtu", "576")  # small MSS: many segments per mail
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "route", "add", "default", "via", gw)
        for dev, addr in (("gc", "198.19.40.254/24"), ("gs", "198.18.20.254/24")):
            sh("ip", "-n", G, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", G, "link", "set", dev, "mtu", "576")
            sh("ip", "-n", G, "link", "set", dev, "up")
        sh("ip", "netns", "exec", G, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for match in (("--dport", "25"), ("--sport", "25")):
            sh("ip", "netns", "exec", G, "iptables", "-A", "FORWARD", "-p", "tcp", *match,
               "-j", "NFQUEUE", "--queue-num", str(QUEUE))  # fmt: skip
        srv = subprocess.Popen(["ip", "netns", "exec", S, sys.executable, "-c", SERVER_PY, SERVER, str(mails)])
        deadline = time.monotonic() + 15
        while not (mails / "ready").exists():
            assert time.monotonic() < deadline and srv.poll() is None, "SMTP server did not start"
            time.sleep(0.05)
        yield {"mails": mails}
    finally:
        if srv is not None:
            srv.terminate()
            srv.wait(5)
        for ns in (C, G, S):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture(params=["store-at-once", "writer-thread"])
def gateway(net: dict[str, Any], request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """The packet loop of a daemon worker; the quarantine put runs at once (as in replay) or on
    the QuarantineWriter's thread (as the daemon does)."""
    from gateway._nfq import Queue

    events: list[dict[str, Any]] = []
    store = MemoryStore() if request.param == "store-at-once" else SlowStore()
    stop = threading.Event()
    started = threading.Event()
    errors: list[BaseException] = []
    state: dict[str, Any] = {"events": events, "store": store}
    policy = CompiledPolicy(zones=(), prefixes=(), interfaces={}, rules=())

    def loop() -> None:
        try:
            with netns.entered(G):
                q = Queue(QUEUE, gso=True)
                writer = QuarantineWriter(store) if request.param == "writer-thread" else None
                live = LiveMailInspector(
                    q, policy, store, events.append, {"mail": FakeProfile()}, FakeClassifier, writer=writer
                )
                q.inspect = live.hook
                state["live"], state["queue"] = live, q
                started.set()
                import select

                p = select.poll()
                p.register(q.fileno(), select.POLLIN)
                if writer is not None:
                    p.register(writer.fileno(), select.POLLIN)
                while not stop.is_set():
                    p.poll(100)
                    live.stored()
                    q.process(lambda pkt, ts, i, o: (2, 0, -1, -1, -1))  # everything queued is INSPECT
                live.close()
                q.close()
        except BaseException as exc:  # surfaced by the test
            errors.append(exc)
            started.set()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    started.wait(10)
    assert not errors, errors
    yield state
    stop.set()
    t.join(10)
    assert not errors, errors


def send(message: bytes) -> None:
    with netns.entered(C):
        smtp = smtplib.SMTP(SERVER, 25, timeout=10)
    try:
        smtp.ehlo("relay.example.com")
        assert not smtp.has_extn("starttls")
        smtp.sendmail("a@example.com", ["b@lg.example.jp"], message)
    finally:
        with contextlib.suppress(smtplib.SMTPServerDisconnected):
            smtp.quit()


def newest(mails: Path, before: set[Path]) -> bytes | None:
    new = sorted(set(mails.glob("*.eml")) - before)
    return new[-1].read_bytes() if new else None


def test_live_clean_exe_and_refused(net: dict[str, Any], gateway: dict[str, Any]) -> None:
    mails: Path = net["mails"]
    clean = mail(text="hello from the internet\n")
    before = set(mails.glob("*.eml"))
    send(clean)
    assert newest(mails, before) == clean

    with_exe = mail((EXE, "請求書.exe"))
    before = set(mails.glob("*.eml"))
    send(with_exe)
    got = newest(mails, before)
    assert got is not None and len(got) == len(with_exe) and b"TVqQ" not in got
    assert b"removed" in got or b"cmVtb3Zl" in got or b"name=r" in got

    before = set(mails.glob("*.eml"))
    with pytest.raises(smtplib.SMTPDataError) as info:
        send(mail((DOCM, "m.docm")))
    assert info.value.smtp_code == 554
    time.sleep(0.5)
    assert newest(mails, before) is None  # the server committed nothing
    q = gateway["queue"]
    assert q.stats()["inspect_rewritten"] > 0
    verdicts = [e["email"]["verdict"] for e in gateway["events"] if e["event_type"] == "smtp"]
    assert verdicts == ["delivered", "sanitized", "refused"]
