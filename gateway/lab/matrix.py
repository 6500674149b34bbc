"""The lab's traffic matrix: what lab-facts.md's policy says for each zone pair, probed for real.

`CASES` is written from the policy's text, not computed from configs/lab.toml, so running it checks
the config and the daemon together (tests/test_e2e_zones.py checks it offline against the engine
too). `lgwan-gateway lab probe` runs it against a lab that is up and prints what passed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from gateway.lab.core import Lab
from gateway.lab.probe import Probe, ProbeResult, run_probes, smtp_client
from gateway.lab.topology import HOSTS_BY_NAME

ACCEPT, INSPECT, DROP = "accept", "inspect", "drop"


@dataclass(frozen=True)
class Case:
    src: str
    dst: str
    proto: str
    port: int  # 0 for ICMP echo
    action: str  # the policy's verdict for the flow: accept | inspect | drop
    note: str = ""

    @property
    def passes(self) -> bool:
        return self.action != DROP

    @property
    def probe(self) -> Probe:
        return Probe(self.src, self.dst, self.proto, self.port)


# Same-zone rows are only decided by the gateway when the lab runs with --isolate-zones.
CASES: tuple[Case, ...] = (
    # mynumber -> lgwan-wan: only the information linkage to chukan tcp/443
    Case("mynumber-terminal", "chukan", "tcp", 443, ACCEPT, "中間サーバー linkage"),
    Case("mynumber-server", "chukan", "tcp", 443, ACCEPT, "中間サーバー linkage"),
    Case("mynumber-terminal", "chukan", "tcp", 22, DROP),
    Case("mynumber-terminal", "chukan", "tcp", 25, DROP),
    Case("mynumber-terminal", "lgwan-asp", "tcp", 443, DROP),
    Case("mynumber-terminal", "chukan", "udp", 53, DROP),
    Case("mynumber-terminal", "chukan", "icmp", 0, DROP),
    # lgwan-wan -> mynumber: nothing, not even the reverse of the allowed flow
    Case("chukan", "mynumber-server", "tcp", 443, DROP),
    Case("lgwan-asp", "mynumber-terminal", "icmp", 0, DROP),
    # mynumber <-> lgwan
    Case("mynumber-terminal", "lgwan-file", "tcp", 445, DROP),
    Case("mynumber-server", "lgwan-mail", "tcp", 25, DROP),
    Case("lgwan-terminal", "mynumber-server", "tcp", 443, DROP),
    Case("lgwan-terminal", "mynumber-terminal", "icmp", 0, DROP),
    Case("lgwan-file", "mynumber-server", "udp", 7, DROP),
    # mynumber <-> internet: never
    Case("mynumber-terminal", "internet-host", "tcp", 443, DROP),
    Case("mynumber-terminal", "internet-browser", "tcp", 3389, DROP),
    Case("mynumber-server", "internet-host", "udp", 53, DROP),
    Case("mynumber-terminal", "internet-host", "icmp", 0, DROP),
    Case("internet-host", "mynumber-server", "tcp", 443, DROP),
    Case("internet-relay", "mynumber-terminal", "tcp", 25, DROP),
    Case("internet-host", "mynumber-terminal", "icmp", 0, DROP),
    # mynumber intra-zone: denied (intra_zone = "deny")
    Case("mynumber-terminal", "mynumber-server", "tcp", 443, DROP, "same zone"),
    Case("mynumber-server", "mynumber-terminal", "icmp", 0, DROP, "same zone"),
    # lgwan -> lgwan-wan: tcp/25 to any host, tcp/443 to lgwan-asp only, ping
    Case("lgwan-terminal", "chukan", "tcp", 25, ACCEPT, "LGWAN mail"),
    Case("lgwan-file", "lgwan-asp", "tcp", 25, ACCEPT, "LGWAN mail"),
    Case("lgwan-terminal", "lgwan-asp", "tcp", 443, ACCEPT, "LGWAN-ASP"),
    Case("lgwan-terminal", "chukan", "tcp", 443, DROP),
    Case("lgwan-terminal", "lgwan-asp", "tcp", 22, DROP),
    Case("lgwan-mail", "chukan", "udp", 53, DROP),
    Case("lgwan-terminal", "chukan", "icmp", 0, ACCEPT, "same tier"),
    # lgwan-wan -> lgwan: ping only
    Case("chukan", "lgwan-file", "icmp", 0, ACCEPT, "same tier"),
    Case("lgwan-asp", "lgwan-mail", "tcp", 25, DROP),
    Case("chukan", "lgwan-terminal", "tcp", 3389, DROP),
    Case("lgwan-asp", "lgwan-terminal", "udp", 7, DROP),
    # lgwan and lgwan-wan intra-zone: allowed (default intra_zone = "allow")
    Case("lgwan-terminal", "lgwan-file", "tcp", 445, ACCEPT, "same zone"),
    Case("lgwan-terminal", "lgwan-mail", "udp", 53, ACCEPT, "same zone"),
    Case("chukan", "lgwan-asp", "tcp", 443, ACCEPT, "same zone"),
    # lgwan -> internet: outbound mail (inspected) from lgwan-mail to the relay; 画面転送
    Case("lgwan-mail", "internet-relay", "tcp", 25, INSPECT, "outbound mail"),
    Case("lgwan-terminal", "internet-browser", "tcp", 3389, ACCEPT, "画面転送"),
    Case("lgwan-file", "internet-browser", "tcp", 3389, DROP),
    Case("lgwan-terminal", "internet-host", "tcp", 3389, DROP),
    Case("lgwan-terminal", "internet-browser", "tcp", 443, DROP),
    Case("lgwan-mail", "internet-host", "tcp", 25, DROP),
    Case("lgwan-terminal", "internet-host", "udp", 53, DROP),
    Case("lgwan-terminal", "internet-host", "icmp", 0, DROP),
    # internet -> lgwan: inbound mail (inspected) from the relay to lgwan-mail only
    Case("internet-relay", "lgwan-mail", "tcp", 25, INSPECT, "inbound mail, sanitized"),
    Case("internet-host", "lgwan-mail", "tcp", 25, DROP),
    Case("internet-relay", "lgwan-terminal", "tcp", 25, DROP),
    Case("internet-browser", "lgwan-terminal", "tcp", 3389, DROP),
    Case("internet-host", "lgwan-file", "icmp", 0, DROP),
    Case("internet-host", "lgwan-terminal", "udp", 7, DROP),
    # lgwan-wan <-> internet: nothing
    Case("lgwan-asp", "internet-host", "tcp", 443, DROP),
    Case("chukan", "internet-relay", "tcp", 25, DROP),
    Case("lgwan-asp", "internet-host", "icmp", 0, DROP),
    Case("internet-host", "lgwan-asp", "tcp", 443, DROP),
    Case("internet-relay", "chukan", "udp", 7, DROP),
    Case("internet-host", "chukan", "icmp", 0, DROP),
    # internet intra-zone: allowed
    Case("internet-host", "internet-browser", "tcp", 3389, ACCEPT, "same zone"),
)


def cases_for(isolate_zones: bool) -> tuple[Case, ...]:
    """Same-zone rows need --isolate-zones: otherwise the zone's bridge switches them, the gateway never sees them."""
    return tuple(c for c in CASES if isolate_zones or HOSTS_BY_NAME[c.src].zone != HOSTS_BY_NAME[c.dst].zone)


def run_matrix(lab: Lab, cases: tuple[Case, ...], timeout: float = 1.0) -> list[ProbeResult]:
    return run_probes(lab.prefix, [c.probe for c in cases], timeout=timeout)


def send_test_mail(lab: Lab, src: str = "internet-relay", dst: str = "lgwan-mail") -> dict[str, Any]:
    """One SMTP session with an attachment; returns what was sent and where it landed (if it did)."""
    maildir = lab.maildir(dst) / "new"
    before = set(maildir.iterdir()) if maildir.is_dir() else set()
    msg = EmailMessage()
    msg["From"] = f"sender@{src}.example.jp"
    msg["To"] = f"soumu@{dst}.example.lg.jp"
    msg["Subject"] = "lab: mail with an attachment"
    msg.set_content("添付ファイルを送ります。\n")
    msg.add_attachment(b"%PDF-1.4\n% lab attachment\n", maintype="application", subtype="pdf", filename="report.pdf")
    wire = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    result: dict[str, Any] = {"src": src, "dst": dst, "sent_bytes": len(wire), "delivered": None, "error": None}
    try:
        with smtp_client(lab.prefix, src, dst, timeout=5.0) as c:
            c.sendmail(str(msg["From"]), [str(msg["To"])], wire)
    except OSError as e:  # smtplib's errors are OSErrors too
        result["error"] = f"{type(e).__name__}: {e}"
        return result
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        new = sorted(set(maildir.iterdir()) - before)
        if new:
            stored = new[0]
            result["delivered"] = str(stored)
            result["stored_bytes"] = stored.stat().st_size
            result["attachment_kept"] = b'filename="report.pdf"' in Path(stored).read_bytes()
            break
        time.sleep(0.05)
    return result


def print_report(lab: Lab, results: list[ProbeResult], cases: tuple[Case, ...], mail: dict[str, Any]) -> bool:
    """A table of what passed and what was blocked; True when everything matched the policy."""
    ok = True
    print(f"{'from':<18} {'to':<18} {'what':<9} {'policy':<8} {'seen':<7} {'':<4} note / answer")
    for r, c in zip(results, cases, strict=True):
        what = c.proto if c.proto == "icmp" else f"{c.proto}/{c.port}"
        match = r.passed == c.passes
        ok &= match
        answer = r.detail if r.passed else ""
        print(
            f"{c.src:<18} {c.dst:<18} {what:<9} {c.action:<8} {'pass' if r.passed else 'block':<7} "
            f"{'ok' if match else 'BAD':<4} {c.note}{'  ' if c.note and answer else ''}{answer}"
        )
    print()
    if mail["error"]:
        print(f"mail {mail['src']} -> {mail['dst']}: not delivered ({mail['error']})")
    elif mail["delivered"]:
        kept = "kept" if mail["attachment_kept"] else "removed"
        print(f"mail {mail['src']} -> {mail['dst']}: delivered, attachment {kept}: {mail['delivered']}")
    else:
        print(f"mail {mail['src']} -> {mail['dst']}: accepted but not in the Maildir")
    st = lab.status()
    print(f"events: {st['paths']['events']}   quarantine: {st['paths']['quarantine']}   logs: {st['paths']['logs']}")
    print("all flows as the policy says" if ok else "SOME FLOWS DIFFER FROM THE POLICY (BAD rows)")
    return ok


def matrix_json(results: list[ProbeResult], cases: tuple[Case, ...], mail: dict[str, Any]) -> str:
    rows = [
        {
            "src": c.src,
            "dst": c.dst,
            "proto": c.proto,
            "port": c.port,
            "policy": c.action,
            "passed": r.passed,
            "ok": r.passed == c.passes,
            "detail": r.detail,
        }
        for r, c in zip(results, cases, strict=True)
    ]
    return json.dumps({"flows": rows, "mail": mail}, ensure_ascii=False, indent=1)
