#!/usr/bin/env python3
"""Mail throughput through the gateway's inline inspection (a script, not a test; issue 5 item 9).

    sudo .venv/bin/python bench/bench_mail.py [--rounds 3] [--json FILE]
    .venv/bin/python bench/bench_mail.py --offline [--profile]     # the inspector alone, no root

Live (root): the namespace lab (gateway/lab, prefix `lgwb-m-`, its own state directory), with a
policy that is configs/lab.toml (offload off) plus three rules from `internet-relay`
198.19.40.25 to `lgwan-mail` 198.18.20.25: tcp/2525 inspected with the lab's own profile `mail`
(attachments = "remove": every attachment neutralized in place and quarantined), tcp/2526
inspected with a profile `mail-pass` (attachments inspected; images, PDF, office, text allowed),
and tcp/2527 allowed without inspection (the floor below), so one daemon serves every case.
(tcp/25 on lgwan-mail is the lab's aiosmtpd; the benchmark's peers are fast C programs instead.)

  server  postfix's `smtp-sink` on lgwan-mail (2525, 2526, 2527), answering 250 to everything
  clients on internet-relay, S sessions in parallel, each sending its messages over one
          connection, as a relay does (--client, default both):
          smtplib      Python's smtplib.sendmail (it dot-stuffs every message, as a Python relay
                       would), one process per session
          smtp-source  postfix's C client (-d -s S -F FILE): the fastest peer, so that the
                       gateway and not the client is what limits

Cases, each in a freshly built lab, rounds interleaved so drift hits every case alike:

  kernel     `lab up --no-daemon`: the same topology, the gateway namespace forwarding in the
             kernel with no iptables rules (the no-gateway baseline: same hops, same veths and
             bridges, so the difference is the daemon and nothing else)
  gateway    `lab up`: the daemon with the benchmark policy, every packet of the two mail flows
             through NFQUEUE and the mail inspector (inspected flows are never offloaded);
             `--workers` worker processes (default one per CPU), new connections dealt to them
             in turn ([daemon] balance = "connection", the default), so the parallel sessions
             of a workload use different workers; three gateway cases:
               remove  inspected, every attachment neutralized and quarantined
               pass    inspected, the JPEG attachment passes
               queued  every packet still through NFQUEUE and a worker's policy check, but not
                       inspected (not offloaded either): the floor, what the queueing alone costs,
                       so the distance from it to remove/pass is the inspector's

Workloads: `5mb` (a message with a 5 MiB JPEG attachment, base64: ~7.2 MB on the wire) and
`50kb` (a message of ~50 KB: a short text and a 36 KiB JPEG). Rates are message bytes (the
DATA content) per second and messages per second over the wall time of the whole transfer.
Machine load: the 1-minute load average after each measurement and the CPU busy share during
it (/proc/stat), plus the CPU seconds of every process in the gateway namespace (the daemon).

Offline: the same messages as synthetic TCP sessions straight into gateway.inspect.MailInspector
(real classifier and profiles), with 1448-byte segments (what an MTU-1500 link carries) and with
64 KiB segments (what the daemon gets from a veth with GSO: NFQA_CFG_F_GSO hands over whole GSO
packets), to profile the inspect path without NFQUEUE and peers.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_live import Procs  # noqa: E402  (processes ended by their own PIDs / process groups)

PREFIX = "lgwb-m-"
RELAY, MAIL = "198.19.40.25", "198.18.20.25"
PORTS = {"remove": 2525, "pass": 2526, "queued": 2527}  # gateway case -> smtp-sink port
PROFILE_OF = {"remove": "mail", "pass": "mail-pass"}
GATEWAY_CASES = ("remove", "pass", "queued")
CLIENTS = ("smtplib", "smtp-source")
Key = tuple[str, str, str, str]  # client, case (kernel | gateway), workload, profile case ("-" for kernel)


def _rule(case: str, description: str) -> str:
    return f"""
[[rules]]
id = "bench-relay-to-mail-{case}"
from = "internet"
to = "lgwan"
proto = "tcp"
src = ["{RELAY}/32"]
dst = ["{MAIL}/32"]
dst_ports = [{PORTS[case]}]
{_action(case)}
log = true
description = "bench_mail.py: {description}"
"""


def _action(case: str) -> str:
    if case == "queued":
        # allowed, not inspected: the one policy way across internet -> lgwan without inspection is
        # the screen-transfer exception, used here only to measure the bare NFQUEUE round trip
        return 'action = "allow"\nexception = "screen_transfer"'
    return f'action = "inspect"\nprofile = "{PROFILE_OF[case]}"'


# Put into configs/lab.toml's rules just after its inbound mail rule (first match wins).
EXTRA_RULES = (
    _rule("remove", "the lab profile (attachments removed)")
    + _rule("pass", "attachments inspected, clean images pass")
    + _rule("queued", "every packet through NFQUEUE and the worker, nothing inspected (floor)")
)
EXTRA_PROFILE = """
[profiles.mail-pass]
kind = "smtp"
description = "bench_mail.py: attachments inspected by true type; images, PDF, office, text pass"
attachments = "inspect"
"""


@dataclass(frozen=True)
class Workload:
    name: str
    attachment: int  # bytes of the JPEG attachment
    messages: int  # per measurement
    sessions: int  # parallel SMTP sessions


WORKLOADS = (Workload("5mb", 5 << 20, 12, 2), Workload("50kb", 36 << 10, 600, 4))


# --- messages -------------------------------------------------------------------------------------
def jpeg(size: int, seed: int = 1) -> bytes:
    """A JPEG header and random (incompressible, like a photo's) entropy-coded data."""
    head = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    return head + random.Random(seed).randbytes(size - len(head) - 2) + b"\xff\xd9"


def message(attachment: int) -> bytes:
    """The benchmark message, CRLF line ends, no line starting with '.' (no stuffing needed)."""
    text = ("本日の会議資料を添付にてお送りします。ご確認ください。\r\n" * 20).encode()
    b64 = base64.encodebytes(jpeg(attachment)).replace(b"\n", b"\r\n")
    return (
        b"From: relay <sender@example.com>\r\nTo: <user@lg.example.jp>\r\nSubject: bench\r\n"
        b"Message-ID: <bench@example.com>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="=_bench_boundary"\r\n\r\n'
        b"--=_bench_boundary\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + text + b"\r\n--=_bench_boundary\r\n"
        b'Content-Type: image/jpeg; name="photo.jpg"\r\nContent-Transfer-Encoding: base64\r\n'
        b'Content-Disposition: attachment; filename="photo.jpg"\r\n\r\n' + b64 + b"--=_bench_boundary--\r\n"
    )


# --- offline: the inspector alone -------------------------------------------------------------------
def session_packets(msg: bytes, count: int, mss: int) -> list[bytes]:
    """IPv4 packets of one SMTP session sending `msg` `count` times; the server ACKs every
    second segment, as a receiver with delayed ACKs does."""
    from gateway.inspect.packet import build_tcp
    from gateway.stream.reassembly import ACK, FIN, PSH, SYN

    client, server = (bytes([198, 19, 40, 25]), 40000), (bytes([198, 18, 20, 25]), 25)
    turns = [("s", b"220 sink ESMTP\r\n"), ("c", b"EHLO relay\r\n"), ("s", b"250-sink\r\n250 PIPELINING\r\n")]
    for _ in range(count):
        turns += [
            ("c", b"MAIL FROM:<sender@example.com>\r\n"),
            ("s", b"250 2.1.0 Ok\r\n"),
            ("c", b"RCPT TO:<user@lg.example.jp>\r\n"),
            ("s", b"250 2.1.5 Ok\r\n"),
            ("c", b"DATA\r\n"),
            ("s", b"354 go\r\n"),
            ("c", msg + b".\r\n"),
            ("s", b"250 2.0.0 Ok: queued\r\n"),
        ]
    turns += [("c", b"QUIT\r\n"), ("s", b"221 2.0.0 Bye\r\n")]
    isn = {"c": 1000, "s": 5000}
    pos = {"c": 0, "s": 0}
    out: list[bytes] = []

    def pkt(d: str, payload: bytes, flags: int) -> None:
        o = "s" if d == "c" else "c"
        src, dst = (client, server) if d == "c" else (server, client)
        seq = isn[d] + (0 if flags & SYN else 1 + pos[d])
        ack = isn[o] + 1 + pos[o] if flags & ACK else 0
        out.append(build_tcp(4, src[0], dst[0], src[1], dst[1], seq, ack, flags, payload))
        pos[d] += len(payload) + (1 if flags & FIN else 0)

    pkt("c", b"", SYN)
    pkt("s", b"", SYN | ACK)
    pkt("c", b"", ACK)
    for d, data in turns:
        other = "s" if d == "c" else "c"
        for n, i in enumerate(range(0, len(data), mss)):
            pkt(d, data[i : i + mss], PSH | ACK)
            if n % 2:
                pkt(other, b"", ACK)
        pkt(other, b"", ACK)
    pkt("c", b"", FIN | ACK)
    pkt("s", b"", FIN | ACK)
    pkt("c", b"", ACK)
    return out


def offline_run(profile: Any, packets: list[bytes]) -> tuple[float, dict[str, int]]:
    """CPU seconds to push the packets through a MailInspector; verdict counts. Every packet must
    be forwarded and no message refused (a refusal would not be the path being measured)."""
    from gateway.inspect import Drop, Forward, Inject, MailInspector, Quarantine
    from gateway.inspect.mail import FlowContext
    from gateway.sanitize.classify import Classifier

    insp = MailInspector({"p": profile}, Classifier)
    ctx = FlowContext(profile="p", rule_id="bench")
    counts = {"forward": 0, "drop": 0, "inject": 0, "quarantine": 0}
    t0 = time.process_time()  # CPU time of this (single-threaded) process: other load does not count
    for pid, raw in enumerate(packets, 1):
        work = insp.packet(pid, raw, 1_800_000_000_000_000 + pid * 10, ctx)
        while work:
            c = work.pop(0)
            if isinstance(c, Forward):
                counts["forward"] += 1
            elif isinstance(c, Drop):
                counts["drop"] += 1
            elif isinstance(c, Inject):
                counts["inject"] += 1
            elif isinstance(c, Quarantine):
                counts["quarantine"] += 1
                # the inspector names the id (it is in the notice already); a store keeps it
                work = insp.quarantined(c.key, getattr(c, "qid", None) or f"q{counts['quarantine']}") + work
    dt = time.process_time() - t0
    if counts["drop"] or counts["inject"]:
        raise SystemExit(f"offline run: packets dropped or the message refused: {counts}")
    return dt, counts


def offline(args: argparse.Namespace) -> int:
    from gateway.inspect.replay import mail_profiles
    from gateway.policy import load_policy_text

    profiles = mail_profiles(load_policy_text(bench_config_text(), "bench.toml").compiled)
    rows = []
    for w in (w for w in WORKLOADS if args.workload in ("both", w.name)):
        msg = message(w.attachment)
        count = max(1, min(w.messages, (40 << 20) // len(msg)))
        for mss in (1448, 65483):
            packets = session_packets(msg, count, mss)
            for case in ("remove", "pass"):
                prof = profiles[PROFILE_OF[case]]
                if args.profile:
                    import cProfile
                    import pstats

                    out = Path(tempfile.gettempdir()) / f"lgwb-mail-{w.name}-{mss}-{case}.prof"
                    cProfile.runctx("offline_run(prof, packets)", globals(), locals(), str(out))
                    print(f"\n== {w.name} mss {mss} {case}: top functions by own time ({out})")
                    pstats.Stats(str(out)).sort_stats("tottime").print_stats(12)
                    continue
                times = [offline_run(prof, packets)[0] for _ in range(args.rounds)]
                dt = statistics.median(times)
                mbs = count * len(msg) / dt / 1e6
                rows.append((w.name, mss, case, mbs, count / dt))
                print(
                    f"{w.name:<5} segments {mss:>5} B  {case:<6}  {mbs:7.1f} MB/s  {count / dt:8.1f} msg/s", flush=True
                )
    if args.json and rows:
        doc = [dict(zip(("workload", "mss", "profile", "mb_s", "msg_s"), r, strict=True)) for r in rows]
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    return 0


# --- live ---------------------------------------------------------------------------------------------
def bench_config_text(workers: int = 1) -> str:
    text = (ROOT / "configs" / "lab.toml").read_text(encoding="utf-8")
    text, n = re.subn(r"(?m)^workers = 1 ", f"workers = {workers} ", text)
    # not offloaded, so the "queued" case's packets all take the worker's path (inspected flows
    # are never offloaded anyway)
    text, m = re.subn(r"(?m)^offload = true ", "offload = false ", text)
    if n != 1 or m != 1:
        raise SystemExit("configs/lab.toml changed shape: bench_mail.py cannot set [daemon] workers and offload")
    anchor = '[[rules]]\nid = "lgwan-mail-to-internet-relay"'
    if anchor not in text or "[profiles.mail]" not in text:
        raise SystemExit("configs/lab.toml changed shape: bench_mail.py cannot place its rules")
    return text.replace(anchor, EXTRA_RULES.lstrip() + "\n" + anchor) + EXTRA_PROFILE


def cpu_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]
    return sum(f) - idle, sum(f)


def ns_cpu_seconds(ns: str) -> float:
    """utime + stime (and that of waited-for children) of the processes in namespace `ns`."""
    from gateway.lab import netns

    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in netns.pids(ns):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])
    return total / tick


@dataclass
class Sample:
    seconds: float
    mb_s: float
    msg_s: float
    busy: float  # CPU busy share during the transfer (all CPUs)
    load1: float  # 1-minute load average just after
    gw_cpu_s: float  # CPU seconds used in the gateway namespace during the transfer


@contextlib.contextmanager
def sinks(lab: Any, procs: Procs, tmp: Path) -> Iterator[None]:
    """smtp-sink on lgwan-mail, one per port (-u postfix: it drops root after binding)."""
    from gateway.lab import netns

    ns = lab.namespace("lgwan-mail")
    started = []
    for port in PORTS.values():
        argv = netns.exec_argv(ns, ["smtp-sink", "-u", "postfix", "-4", f"{MAIL}:{port}", "256"])
        with (tmp / f"smtp-sink-{port}.log").open("wb") as log:  # the child keeps its own copy
            started.append(procs.spawn(argv, stdout=log, stderr=log))
    try:
        deadline = time.monotonic() + 5
        while True:
            out = subprocess.run(netns.exec_argv(ns, ["ss", "-ltnH"]), capture_output=True, text=True).stdout
            if all(f"{MAIL}:{p} " in out for p in PORTS.values()):
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p in started):
                raise SystemExit(f"smtp-sink did not start: {out}\n{(tmp / 'smtp-sink-2525.log').read_text()}")
            time.sleep(0.05)
        yield
    finally:
        for p in started:
            procs.end(p)


def smtplib_client(port: int, path: str, count: int) -> int:
    """One session of the smtplib client (run inside the relay's namespace by transfer()):
    `count` messages with smtplib's sendmail (it dot-stuffs each message, as a Python relay
    would); prints the wall-clock start and end for the parent."""
    import smtplib

    msg = Path(path).read_bytes()
    with smtplib.SMTP(MAIL, port, local_hostname="relay.example.com", timeout=120) as s:
        s.ehlo()
        t0 = time.time()
        for _ in range(count):
            s.sendmail("sender@example.com", ["user@lg.example.jp"], msg)
        t1 = time.time()
    print(json.dumps({"start": t0, "end": t1}))
    return 0


def run_clients(lab: Any, client: str, w: Workload, port: int, msgfile: Path) -> float:
    """Send w.messages over w.sessions parallel sessions; the transfer's wall time in seconds."""
    from gateway.lab import netns

    relay = lab.namespace("internet-relay")
    if client == "smtp-source":
        argv = ["smtp-source", "-4", "-d", "-s", str(w.sessions), "-m", str(w.messages), "-F", str(msgfile)]
        argv += ["-M", "relay.example.com", "-f", "sender@example.com", "-t", "user@lg.example.jp", f"{MAIL}:{port}"]
        t0 = time.perf_counter()
        r = subprocess.run(netns.exec_argv(relay, argv), capture_output=True, text=True, timeout=600)
        if r.returncode:
            raise RuntimeError(f"smtp-source to port {port} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
        return time.perf_counter() - t0
    per = [w.messages // w.sessions + (i < w.messages % w.sessions) for i in range(w.sessions)]
    argv = [sys.executable, str(Path(__file__).resolve()), "--smtplib-client", str(port), str(msgfile)]
    clients = [
        subprocess.Popen(netns.exec_argv(relay, [*argv, str(n)]), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for n in per
    ]
    spans = []
    for c in clients:
        out, err = c.communicate(timeout=600)
        if c.returncode:
            raise RuntimeError(f"smtplib client to port {port} failed: {err.decode(errors='replace')[-800:]}")
        spans.append(json.loads(out))
    return max(x["end"] for x in spans) - min(x["start"] for x in spans)


def transfer(lab: Any, client: str, w: Workload, port: int, msgfile: Path, size: int) -> Sample:
    gw = lab.namespace("gateway")
    b0, c0 = cpu_busy(), ns_cpu_seconds(gw)
    dt = run_clients(lab, client, w, port, msgfile)
    b1, c1 = cpu_busy(), ns_cpu_seconds(gw)
    busy = (b1[0] - b0[0]) / max(1, b1[1] - b0[1])
    return Sample(dt, w.messages * size / dt / 1e6, w.messages / dt, busy, os.getloadavg()[0], c1 - c0)


def check_events(lab: Any) -> dict[str, int]:
    """smtp verdicts the daemon logged (a refused message would mean a broken measurement)."""
    counts: dict[str, int] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in lab.events_path.read_text().splitlines():
            ev = json.loads(line)
            if ev.get("event_type") == "smtp":
                v = ev["email"]["verdict"]
                counts[v] = counts.get(v, 0) + 1
    return counts


def live(args: argparse.Namespace) -> int:
    from gateway.lab import running_lab

    clients = CLIENTS if args.client == "both" else (args.client,)
    workloads = [w for w in WORKLOADS if args.workload in ("both", w.name)]
    for tool in ("smtp-sink", "smtp-source", "ip", "iptables-restore", "ss"):
        if not shutil.which(tool):
            print(f"{tool} missing: sudo bash scripts/setup.sh (postfix, iproute2, iptables)", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    procs = Procs()
    results: dict[Key, list[Sample]] = {}
    verdicts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="lgwb-mail-", dir="/run" if Path("/run").is_dir() else None) as d:
        tmp = Path(d)
        os.chmod(tmp, 0o755)  # smtp-sink drops to the postfix user; the clients read the files
        config = tmp / "bench.toml"
        config.write_text(bench_config_text(args.workers))
        files: dict[tuple[str, str], tuple[Path, int]] = {}
        for w in WORKLOADS:
            msg = message(w.attachment)
            # smtp-source -F appends CRLF to each line it reads: it gets LF-terminated lines;
            # smtplib sends bytes as they are: it gets CRLF
            for client, data in (("smtp-source", msg.replace(b"\r\n", b"\n")), ("smtplib", msg)):
                path = tmp / f"{w.name}.{client}.eml"
                path.write_bytes(data)
                files[(client, w.name)] = (path, len(msg))
        try:
            for rnd in range(args.rounds):
                for case in ("kernel", "gateway"):
                    state = tmp / f"state-{case}"
                    with running_lab(config, daemon=case == "gateway", state_dir=state, prefix=PREFIX) as lab:
                        with sinks(lab, procs, tmp):
                            for client in clients:
                                for w in workloads:
                                    for prof in GATEWAY_CASES if case == "gateway" else ("-",):
                                        path, size = files[(client, w.name)]
                                        port = PORTS[prof if prof != "-" else "remove"]
                                        s = transfer(lab, client, w, port, path, size)
                                        results.setdefault((client, case, w.name, prof), []).append(s)
                                        label = case if case == "kernel" else f"gateway/{prof}"
                                        print(
                                            f"round {rnd + 1}/{args.rounds} {client:<11} {label:<15} {w.name:<5} "
                                            f"{s.mb_s:7.1f} MB/s {s.msg_s:8.1f} msg/s  {s.seconds:5.2f} s  "
                                            f"CPU busy {s.busy:4.0%}  load {s.load1:4.2f}  "
                                            f"gateway CPU {s.gw_cpu_s:5.2f} s",
                                            flush=True,
                                        )
                        if case == "gateway":
                            for k, v in check_events(lab).items():
                                verdicts[k] = verdicts.get(k, 0) + v
        finally:
            procs.end_all()
    report(results, verdicts, args)
    return 0


def report(results: dict[Key, list[Sample]], verdicts: dict[str, int], args: argparse.Namespace) -> None:
    def med(k: Key, attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in results[k])

    print(
        f"\nmedians of {args.rounds} rounds ({os.cpu_count()} CPUs, daemon workers {args.workers}; "
        "clients -> smtp-sink over veth + bridges)"
    )
    head = f"{'client':<11} {'case':<15} {'load':<5} {'MB/s':>7} {'msg/s':>8} {'CPU busy':>8} {'load1':>6}"
    head += f" {'gw CPU/msg':>10}"
    print(head)
    print("-" * len(head))
    doc: dict[str, Any] = {}
    for k, samples in results.items():
        client, case, wname, prof = k
        label = "kernel" if case == "kernel" else f"gateway/{prof}"
        w = next(x for x in WORKLOADS if x.name == wname)
        per_msg = med(k, "gw_cpu_s") / w.messages
        print(
            f"{client:<11} {label:<15} {wname:<5} {med(k, 'mb_s'):7.1f} {med(k, 'msg_s'):8.1f} "
            f"{med(k, 'busy'):8.0%} {med(k, 'load1'):6.2f} {per_msg * 1e3:7.2f} ms"
        )
        doc["/".join(k)] = [vars(s) for s in samples]
    print(f"\ndaemon smtp events over all rounds: {verdicts or 'none'} (expected: sanitized, delivered; no refused)")
    print("\ngoals (issue 5): through the gateway >= 50% of the no-gateway (kernel) rate")
    for client in dict.fromkeys(k[0] for k in results):
        for prof in ("remove", "pass"):
            for wname, attr, unit in (("5mb", "mb_s", "MB/s"), ("50kb", "msg_s", "msg/s")):
                if (client, "gateway", wname, prof) not in results:
                    continue
                r = med((client, "gateway", wname, prof), attr) / med((client, "kernel", wname, "-"), attr)
                print(f"  {client:<11} {prof:<6} {wname:<5} {unit:<6} {r:7.1%}  {'met' if r >= 0.5 else 'NOT met'}")
    print("floor: queued, not inspected (what NFQUEUE and the worker loop cost alone)")
    for k in results:
        client, case, wname, prof = k
        if prof == "queued":
            attr, unit = ("mb_s", "MB/s") if wname == "5mb" else ("msg_s", "msg/s")
            r = med(k, attr) / med((client, "kernel", wname, "-"), attr)
            print(f"  {client:<11} {prof:<6} {wname:<5} {unit:<6} {r:7.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="rounds (median), default %(default)s")
    ap.add_argument("--offline", action="store_true", help="the inspector alone on synthetic sessions (no root)")
    ap.add_argument("--profile", action="store_true", help="with --offline: cProfile each case instead of timing")
    ap.add_argument("--client", choices=(*CLIENTS, "both"), default="both", help="default %(default)s")
    ap.add_argument("--json", help="also write every sample here")
    ap.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="the daemon's workers (connections dealt in turn), default one per CPU: %(default)s",
    )
    names = (*(w.name for w in WORKLOADS), "both")
    ap.add_argument("--workload", choices=names, default="both", help="default %(default)s")
    ap.add_argument("--smtplib-client", nargs=3, metavar=("PORT", "FILE", "COUNT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smtplib_client:
        port, path, count = args.smtplib_client
        return smtplib_client(int(port), path, int(count))
    if args.offline:
        return offline(args)
    if os.geteuid() != 0:
        print("bench_mail.py needs root (network namespaces, iptables); --offline does not", file=sys.stderr)
        return 2
    return live(args)


if __name__ == "__main__":
    sys.exit(main())
