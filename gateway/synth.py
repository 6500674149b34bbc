"""Traffic synthesizer for the built-in lab: realistic flows between every pair of lab zones.

The capture is what the gateway sees on its legs: every frame goes from a host to the gateway's
MAC in the host's zone, so replaying it decides each packet exactly once. Addresses are the lab's
(198.18.0.0/15 only, docs/lab-facts): never anything routable.

Speed: scapy builds one template frame per packet *shape* (case, direction, flags, payload) once;
each flow then copies the templates and patches addresses, ports, sequence numbers and IP ids with
struct, fixing the checksums incrementally (RFC 1624). That keeps the checksums valid and writes
a million packets in seconds, which scapy per packet could not.

Deterministic: the same seed gives a byte-identical capture.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import struct
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Raw

# --- the lab (docs: /work/shared/lab-facts.md, configs/lab.toml) ------------------------------
ZONES = ("mynumber", "lgwan", "lgwan-wan", "internet")
ZONE_NETS = {
    "mynumber": "198.18.10.0/24",
    "lgwan": "198.18.20.0/24",
    "lgwan-wan": "198.18.30.0/24",
    "internet": "198.19.40.0/24",
}


@dataclass(frozen=True)
class Host:
    name: str
    zone: str
    ip: str

    @property
    def mac(self) -> bytes:
        # locally administered, derived from the address so a capture is easy to read
        return b"\x02\x00" + ipaddress.IPv4Address(self.ip).packed


HOSTS: dict[str, Host] = {
    h.name: h
    for h in (
        Host("mynumber-terminal", "mynumber", "198.18.10.10"),
        Host("mynumber-server", "mynumber", "198.18.10.20"),
        Host("lgwan-terminal", "lgwan", "198.18.20.10"),
        Host("lgwan-mail", "lgwan", "198.18.20.25"),
        Host("lgwan-file", "lgwan", "198.18.20.30"),
        Host("chukan", "lgwan-wan", "198.18.30.40"),
        Host("lgwan-asp", "lgwan-wan", "198.18.30.50"),
        Host("internet-relay", "internet", "198.19.40.25"),
        Host("internet-browser", "internet", "198.19.40.80"),
        Host("internet-host", "internet", "198.19.40.100"),
    )
}


def gateway_mac(zone: str) -> bytes:
    """The gateway's MAC on its leg in `zone` (its address there is .254)."""
    net = ipaddress.IPv4Network(ZONE_NETS[zone])
    return b"\x02\x00" + (net.network_address + 254).packed


# --- traffic cases ----------------------------------------------------------------------------
# kind: "tcp" (handshake, data both ways, FIN) / "udp" (request, response) / "icmp" (echo) for
# flows; "orphan" reply-looking TCP without a flow; "orphan-icmp" an echo reply without request;
# "frag" a fragmented echo / datagram; "overlap" overlapping fragments; "arp" a non-IP frame.
# expect: what the lab policy says about the first packet: "accept", "drop" or "inspect".
# Denied flows look like real denied flows: the client only ever retransmits its first packet.


@dataclass(frozen=True)
class Case:
    name: str
    src: str  # host names
    dst: str
    kind: str
    dport: int  # TCP/UDP; 0 for ICMP
    expect: str
    why: str
    app: str = ""  # payload profile: https, smtp, rdp, smb, dns, ntp, syslog, ssh, http
    vary_src: bool = False  # bench: the rule matches the whole source zone, so vary the client host

    @property
    def src_zone(self) -> str:
        return HOSTS[self.src].zone

    @property
    def dst_zone(self) -> str:
        return HOSTS[self.dst].zone

    @property
    def proto(self) -> str:
        if self.kind in ("tcp", "orphan"):
            return "tcp"
        if self.kind in ("udp", "overlap"):
            return "udp"
        if self.kind == "arp":
            return "arp"
        if self.kind == "frag":
            return "udp" if self.dport else "icmp"
        return "icmp"


CASES: tuple[Case, ...] = (
    # mynumber (マイナンバー利用事務系): only mynumber -> 中間サーバー 443
    Case("mynumber-to-chukan-https", "mynumber-terminal", "chukan", "tcp", 443, "accept",
         "mynumber -> chukan tcp/443 is the only mynumber exit", "https", vary_src=True),
    Case("mynumber-server-to-chukan-https", "mynumber-server", "chukan", "tcp", 443, "accept",
         "any mynumber host may reach chukan tcp/443", "https", vary_src=True),
    Case("mynumber-to-chukan-http", "mynumber-terminal", "chukan", "tcp", 80, "drop",
         "only 443 to chukan", "http"),
    Case("mynumber-to-chukan-dns", "mynumber-terminal", "chukan", "udp", 53, "drop",
         "only tcp/443 to chukan", "dns"),
    Case("mynumber-to-chukan-ping", "mynumber-terminal", "chukan", "icmp", 0, "drop",
         "no ICMP from mynumber"),
    Case("mynumber-to-lgwan-asp-https", "mynumber-terminal", "lgwan-asp", "tcp", 443, "drop",
         "only chukan, not LGWAN-ASP"),
    Case("mynumber-to-lgwan-file-smb", "mynumber-terminal", "lgwan-file", "tcp", 445, "drop",
         "mynumber <-> lgwan is separated", "smb"),
    Case("mynumber-to-internet-https", "mynumber-terminal", "internet-host", "tcp", 443, "drop",
         "mynumber <-> internet can never be allowed", "https"),
    Case("mynumber-to-internet-ping", "mynumber-terminal", "internet-host", "icmp", 0, "drop",
         "mynumber <-> internet can never be allowed"),
    # lgwan (LGWAN接続系)
    Case("lgwan-to-mynumber-https", "lgwan-terminal", "mynumber-server", "tcp", 443, "drop",
         "nothing may enter mynumber", "https"),
    Case("lgwan-mail-to-wan-smtp", "lgwan-mail", "chukan", "tcp", 25, "accept",
         "lgwan -> lgwan-wan tcp/25 (LGWAN mail)", "smtp", vary_src=True),
    Case("lgwan-to-asp-https", "lgwan-terminal", "lgwan-asp", "tcp", 443, "accept",
         "lgwan -> LGWAN-ASP tcp/443", "https", vary_src=True),
    Case("lgwan-to-chukan-https", "lgwan-terminal", "chukan", "tcp", 443, "drop",
         "443 only to lgwan-asp", "https"),
    Case("lgwan-to-chukan-ping", "lgwan-terminal", "chukan", "icmp", 0, "accept",
         "ICMP echo within the lgwan tier", vary_src=True),
    Case("lgwan-to-asp-dns", "lgwan-terminal", "lgwan-asp", "udp", 53, "drop",
         "no UDP rule lgwan -> lgwan-wan", "dns"),
    Case("lgwan-to-browser-rdp", "lgwan-terminal", "internet-browser", "tcp", 3389, "accept",
         "画面転送: lgwan-terminal -> internet-browser tcp/3389", "rdp"),
    Case("lgwan-file-to-browser-rdp", "lgwan-file", "internet-browser", "tcp", 3389, "drop",
         "画面転送 only from lgwan-terminal", "rdp"),
    Case("lgwan-mail-to-relay-smtp", "lgwan-mail", "internet-relay", "tcp", 25, "inspect",
         "outbound mail through the relay is inspected", "smtp"),
    Case("lgwan-to-internet-https", "lgwan-terminal", "internet-host", "tcp", 443, "drop",
         "no direct internet from lgwan", "https"),
    Case("lgwan-to-internet-ping", "lgwan-terminal", "internet-host", "icmp", 0, "drop",
         "no ICMP between lgwan and internet"),
    # lgwan-wan (LGWAN backbone, LGWAN-ASP, 中間サーバー)
    Case("chukan-to-mynumber-https", "chukan", "mynumber-server", "tcp", 443, "drop",
         "only mynumber initiates to chukan", "https"),
    Case("wan-to-lgwan-ping", "lgwan-asp", "lgwan-file", "icmp", 0, "accept",
         "ICMP echo within the lgwan tier"),
    Case("wan-to-lgwan-smb", "chukan", "lgwan-file", "tcp", 445, "drop",
         "lgwan-wan may not open lgwan services", "smb"),
    Case("wan-to-lgwan-syslog", "lgwan-asp", "lgwan-terminal", "udp", 514, "drop",
         "no UDP rule lgwan-wan -> lgwan", "syslog"),
    Case("wan-to-internet-https", "chukan", "internet-host", "tcp", 443, "drop",
         "lgwan tier <-> internet only via the listed exceptions", "https"),
    Case("wan-to-internet-ntp", "lgwan-asp", "internet-host", "udp", 123, "drop",
         "lgwan tier <-> internet only via the listed exceptions", "ntp"),
    # internet (インターネット接続系)
    Case("internet-to-mynumber-ssh", "internet-host", "mynumber-server", "tcp", 22, "drop",
         "mynumber <-> internet can never be allowed", "ssh"),
    Case("internet-to-mynumber-ping", "internet-host", "mynumber-terminal", "icmp", 0, "drop",
         "mynumber <-> internet can never be allowed"),
    Case("relay-to-lgwan-mail-smtp", "internet-relay", "lgwan-mail", "tcp", 25, "inspect",
         "inbound mail via the relay is sanitized", "smtp"),
    Case("internet-to-lgwan-mail-smtp", "internet-host", "lgwan-mail", "tcp", 25, "drop",
         "only the relay may deliver mail", "smtp"),
    Case("browser-to-lgwan-rdp", "internet-browser", "lgwan-terminal", "tcp", 3389, "drop",
         "画面転送 is one-way: lgwan opens it", "rdp"),
    Case("internet-to-lgwan-dns", "internet-host", "lgwan-terminal", "udp", 53, "drop",
         "nothing from the internet into lgwan but mail", "dns"),
    Case("internet-to-asp-https", "internet-host", "lgwan-asp", "tcp", 443, "drop",
         "internet may not reach the LGWAN backbone", "https"),
    # packets that only look like traffic
    Case("orphan-synack-to-lgwan", "internet-host", "lgwan-terminal", "orphan", 443, "drop",
         "reply-looking SYN+ACK without a flow"),
    Case("orphan-ack-to-mynumber", "internet-host", "mynumber-server", "orphan", 443, "drop",
         "ACK with data without a flow"),
    Case("orphan-rst-to-mynumber", "chukan", "mynumber-terminal", "orphan", 443, "drop",
         "RST without a flow"),
    Case("orphan-echo-reply-to-lgwan", "internet-host", "lgwan-terminal", "orphan-icmp", 0, "drop",
         "echo reply without a request"),
    Case("fragmented-ping-lgwan-to-chukan", "lgwan-terminal", "chukan", "frag", 0, "accept",
         "large echo, fragmented both ways; reassembled and allowed"),
    Case("fragmented-udp-internet-to-mynumber", "internet-host", "mynumber-server", "frag", 5060, "drop",
         "fragmented datagram into mynumber"),
    Case("overlapping-fragments-to-lgwan", "internet-host", "lgwan-terminal", "overlap", 53, "drop",
         "overlapping IPv4 fragments (RFC 5722)"),
    Case("arp-lgwan-terminal", "lgwan-terminal", "lgwan-terminal", "arp", 0, "drop",
         "ARP is link-local, not forwarded"),
)  # fmt: skip


def zone_pairs() -> list[tuple[str, str]]:
    """Every ordered pair of distinct lab zones (what the synthesized traffic must cover)."""
    return [(a, b) for a in ZONES for b in ZONES if a != b]


# --- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowInfo:
    """One synthesized flow (or flow-less packet group), keyed as its first packet is sent."""

    case: int  # index into CASES
    src: str
    dst: str
    proto: int  # IANA number; 0 for ARP
    sport: int  # ICMP: identifier
    dport: int
    packets: int
    start_us: int


@dataclass
class SynthResult:
    path: Path
    packets: int = 0
    bytes: int = 0
    flows: list[FlowInfo] = field(default_factory=list)
    # demo only: (src ip, dst ip, ip id) -> case index, unique per IPv4 packet; lets a reader map
    # forwarded packets back to cases whatever the order or payload rewrites
    labels: dict[tuple[str, str, int], int] = field(default_factory=dict)
    cases: tuple[Case, ...] = CASES


# --- template frames and fast patching ----------------------------------------------------------
ETH = 14  # Ethernet header length: templates are untagged IPv4
_H = struct.Struct("!H")
_HH = struct.Struct("!HH")
_I = struct.Struct("!I")
_IP_WORDS = struct.Struct("!10H")
_REC = struct.Struct("<IIII")


def _words32(v: int) -> int:
    return (v >> 16) + (v & 0xFFFF)


def _fold(s: int) -> int:
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return s


def _ip_checksum(buf: bytearray) -> None:
    buf[ETH + 10] = buf[ETH + 11] = 0
    _H.pack_into(buf, ETH + 10, ~_fold(sum(_IP_WORDS.unpack_from(buf, ETH))) & 0xFFFF)


@dataclass
class _Tpl:
    """A template frame and what must be patched per flow."""

    frame: bytes
    c2s: bool  # client -> server
    dt_us: int  # offset from the flow's start
    proto: int
    rel_seq: int = 0  # TCP: relative to the sender's ISN
    rel_ack: int = 0  # relative to the peer's ISN; only with ACK set
    has_ack: bool = False
    # one's-complement sum of ~checksum and ~(every patched word as in the template): adding
    # the new words and folding gives the new L4 checksum (RFC 1624, eqn. 3)
    base: int = 0
    l4_csum_off: int = -1  # -1: the frame is patched without an L4 checksum (fragments, ARP)


def _eth(src: Host, dst_zone: str) -> Ether:
    return Ether(src=_mac_text(src.mac), dst=_mac_text(gateway_mac(dst_zone)))


def _mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def _not16(v: int) -> int:
    return ~v & 0xFFFF


def _tpl(pkt: Packet, c2s: bool, dt_us: int) -> _Tpl:
    frame = raw(pkt)
    proto = frame[ETH + 9]
    ihl = (frame[ETH] & 0x0F) * 4
    l4 = ETH + ihl
    t = _Tpl(frame, c2s, dt_us, proto)
    words = list(struct.unpack_from("!4H", frame, ETH + 12))  # src, dst addresses
    if proto == 6:
        sport, dport, seq, ack = struct.unpack_from("!HHII", frame, l4)
        t.rel_seq, t.rel_ack, t.has_ack = seq, ack, bool(frame[l4 + 13] & 0x10)
        words += [sport, dport, seq >> 16, seq & 0xFFFF, ack >> 16, ack & 0xFFFF]
        t.l4_csum_off = l4 + 16
    elif proto == 17:
        words += list(_HH.unpack_from(frame, l4))
        t.l4_csum_off = l4 + 6
    elif proto == 1:
        words = list(_HH.unpack_from(frame, l4 + 4))  # ICMP: identifier, sequence (no pseudo header)
        t.l4_csum_off = l4 + 2
    (csum,) = _H.unpack_from(frame, t.l4_csum_off)
    t.base = _not16(csum) + sum(_not16(w) for w in words)
    return t


class _FlowScript:
    """Template frames of one flow shape (case + size variant), built once with scapy."""

    def __init__(self, case: Case, tpls: list[_Tpl]) -> None:
        self.case = case
        self.tpls = tpls
        self.client = HOSTS[case.src]
        self.server = HOSTS[case.dst]


# Canonical values the templates are built with; every flow patches them.
_CPORT = 40000
_ICMP_ID = 0x1000


def _tcp_script(case: Case, exchanges: Sequence[tuple[bytes, bytes]], denied: bool, rng: random.Random) -> list[_Tpl]:
    """TCP: SYN (retransmitted if denied) or handshake, request/response exchanges, FIN."""
    c, s = HOSTS[case.src], HOSTS[case.dst]
    ip_c = IP(src=c.ip, dst=s.ip, ttl=64, flags="DF", id=0)
    ip_s = IP(src=s.ip, dst=c.ip, ttl=64, flags="DF", id=0)
    e_c, e_s = _eth(c, c.zone), _eth(s, s.zone)
    sp, dp = _CPORT, case.dport
    syn_opts = [("MSS", 1460), ("NOP", None), ("WScale", 7), ("NOP", None), ("NOP", None), ("SAckOK", b"")]
    syn = e_c / ip_c / TCP(sport=sp, dport=dp, flags="S", seq=0, window=64240, options=syn_opts)
    if denied:  # the gateway drops the SYN: the client retransmits it (1 s, then 2 s later)
        return [_tpl(syn, True, 0), _tpl(syn, True, 1_000_000), _tpl(syn, True, 3_000_000)]
    rtt = rng.choice((300, 800, 2_000, 5_000))  # µs; LGWAN ASPs are a few ms away
    out = [_tpl(syn, True, 0)]
    cs, ss = 1, 1  # next sequence numbers (ISNs are 0 in the template)
    t = rtt
    out.append(
        _tpl(
            e_s / ip_s / TCP(sport=dp, dport=sp, flags="SA", seq=0, ack=1, window=65160, options=syn_opts[:3]), False, t
        )
    )
    t += 50
    out.append(_tpl(e_c / ip_c / TCP(sport=sp, dport=dp, flags="A", seq=cs, ack=ss, window=502), True, t))
    mss = 1460
    for req, resp in exchanges:
        for i in range(0, len(req), mss):
            seg = req[i : i + mss]
            t += 40
            out.append(
                _tpl(e_c / ip_c / TCP(sport=sp, dport=dp, flags="PA", seq=cs, ack=ss, window=502) / Raw(seg), True, t)
            )
            cs += len(seg)
        t += rtt
        unacked = 0
        for i in range(0, len(resp), mss):
            seg = resp[i : i + mss]
            t += 12  # ~1 Gbit/s serialization of a full segment
            out.append(
                _tpl(
                    e_s
                    / ip_s
                    / TCP(sport=dp, dport=sp, flags="PA" if i + mss >= len(resp) else "A", seq=ss, ack=cs, window=509)
                    / Raw(seg),
                    False,
                    t,
                )
            )
            ss += len(seg)
            unacked += 1
            if unacked == 2 or i + mss >= len(resp):  # delayed ACK: every second segment
                t += 30
                out.append(_tpl(e_c / ip_c / TCP(sport=sp, dport=dp, flags="A", seq=cs, ack=ss, window=502), True, t))
                unacked = 0
    # active close by the client
    t += 100
    out.append(_tpl(e_c / ip_c / TCP(sport=sp, dport=dp, flags="FA", seq=cs, ack=ss, window=502), True, t))
    t += rtt
    out.append(_tpl(e_s / ip_s / TCP(sport=dp, dport=sp, flags="FA", seq=ss, ack=cs + 1, window=509), False, t))
    t += 50
    out.append(_tpl(e_c / ip_c / TCP(sport=sp, dport=dp, flags="A", seq=cs + 1, ack=ss + 1, window=502), True, t))
    return out


def _udp_script(case: Case, req: bytes, resp: bytes, denied: bool) -> list[_Tpl]:
    c, s = HOSTS[case.src], HOSTS[case.dst]
    q = _eth(c, c.zone) / IP(src=c.ip, dst=s.ip, ttl=64, id=0) / UDP(sport=_CPORT, dport=case.dport) / Raw(req)
    if denied:  # no answer: the client retries once
        return [_tpl(q, True, 0), _tpl(q, True, 2_000_000)]
    r = _eth(s, s.zone) / IP(src=s.ip, dst=c.ip, ttl=64, id=0) / UDP(sport=case.dport, dport=_CPORT) / Raw(resp)
    return [_tpl(q, True, 0), _tpl(r, False, 600)]


def _icmp_script(case: Case, count: int, denied: bool) -> list[_Tpl]:
    c, s = HOSTS[case.src], HOSTS[case.dst]
    data = bytes(range(16, 56))  # like iputils ping's 56-byte payload after the timestamp
    out = []
    for k in range(count):
        req = (
            _eth(c, c.zone)
            / IP(src=c.ip, dst=s.ip, ttl=64, flags="DF", id=0)
            / ICMP(type=8, id=_ICMP_ID, seq=k + 1)
            / Raw(bytes(8) + data)
        )
        out.append(_tpl(req, True, k * 1_000_000))
        if not denied:
            rep = (
                _eth(s, s.zone)
                / IP(src=s.ip, dst=c.ip, ttl=64, id=0)
                / ICMP(type=0, id=_ICMP_ID, seq=k + 1)
                / Raw(bytes(8) + data)
            )
            out.append(_tpl(rep, False, k * 1_000_000 + 700))
    return out


def _payloads(app: str, rng: random.Random, size: int) -> list[tuple[bytes, bytes]]:
    """Request/response exchanges of a protocol, with `size` scaling the bulk part."""

    def blob(n: int) -> bytes:
        return rng.randbytes(n)

    if app == "smtp":
        body = (
            b"From: =?UTF-8?B?5biC5b255omA?= <soumu@city.example.lg.jp>\r\nTo: kikaku@pref.example.lg.jp\r\n"
            b"Subject: =?UTF-8?B?5Lya6K2w6LOH5paZ?=\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
            b"--b1\r\nContent-Type: text/plain; charset=UTF-8\r\n\r\n"
            + "会議資料を送付します。\r\n".encode()
            + b'--b1\r\nContent-Type: application/pdf; name="shiryou.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
            + b"".join(b"JVBERi0xLjcKJeLjz9MK" * 3 + b"\r\n" for _ in range(max(1, size * 20)))
            + b"--b1--\r\n.\r\n"
        )
        return [
            (b"", b"220 mail.example.lg.jp ESMTP\r\n"),
            (b"EHLO relay.example.lg.jp\r\n", b"250-mail.example.lg.jp\r\n250-SIZE 10485760\r\n250 8BITMIME\r\n"),
            (b"MAIL FROM:<soumu@city.example.lg.jp>\r\n", b"250 2.1.0 Ok\r\n"),
            (b"RCPT TO:<kikaku@pref.example.lg.jp>\r\n", b"250 2.1.5 Ok\r\n"),
            (b"DATA\r\n", b"354 End data with <CR><LF>.<CR><LF>\r\n"),
            (body, b"250 2.0.0 Ok: queued as 4XYZ\r\n"),
            (b"QUIT\r\n", b"221 2.0.0 Bye\r\n"),
        ]
    if app == "rdp":  # 画面転送: small inputs up, screen updates down, many round trips
        return [(blob(rng.randint(40, 200)), blob(rng.randint(200, 3000))) for _ in range(max(2, size * 4))]
    if app in ("http", "https"):
        hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + blob(506) if app == "https" else b""
        req = b"GET /api/v1/records HTTP/1.1\r\nHost: asp.example.lg.jp\r\n\r\n"
        ex = [(hello, blob(2800))] if app == "https" else []
        return [*ex, (blob(300) if app == "https" else req, blob(1460 * size + rng.randint(0, 1000)))]
    if app == "smb":
        return [(blob(200), blob(250)), (blob(300), blob(1460 * size))]
    return [(blob(120), blob(400))]  # ssh and others: a short exchange


def _build_script(case: Case, rng: random.Random, size: int) -> _FlowScript:
    denied = case.expect == "drop"
    if case.kind == "tcp":
        tpls = _tcp_script(case, [] if denied else _payloads(case.app, rng, size), denied, rng)
    elif case.kind == "udp":
        tpls = _udp_script(case, rng.randbytes(40), rng.randbytes(120), denied)
    elif case.kind == "icmp":
        tpls = _icmp_script(case, 4, denied)
    else:
        tpls = _special(case)
    return _FlowScript(case, tpls)


def _special(case: Case) -> list[_Tpl]:
    c, s = HOSTS[case.src], HOSTS[case.dst]
    e = _eth(c, c.zone)
    ip = IP(src=c.ip, dst=s.ip, ttl=64, id=0)
    if case.kind == "orphan":  # src is the sender of the reply-looking packet, the "server" port
        flags = {"orphan-synack-to-lgwan": "SA", "orphan-rst-to-mynumber": "R"}.get(case.name, "PA")
        payload = Raw(b"HTTP/1.1 200 OK\r\n\r\n") if flags == "PA" else Raw(b"")
        pkt = e / ip / TCP(sport=case.dport, dport=_CPORT, flags=flags, seq=1000, ack=1) / payload
        return [_tpl(pkt, True, 0)]
    if case.kind == "orphan-icmp":
        return [_tpl(e / ip / ICMP(type=0, id=_ICMP_ID, seq=1) / Raw(bytes(48)), True, 0)]
    if case.kind == "arp":
        arp = Ether(src=_mac_text(c.mac), dst="ff:ff:ff:ff:ff:ff") / ARP(
            op=1, hwsrc=_mac_text(c.mac), psrc=c.ip, pdst=str(ipaddress.IPv4Address(c.ip) + (254 - 10))
        )
        return [_Tpl(raw(arp), True, 0, 0)]
    out: list[_Tpl] = []
    if case.kind == "frag" and case.dport == 0:  # 3000-byte echo, fragmented both ways
        req = IP(src=c.ip, dst=s.ip, ttl=64, id=1) / ICMP(type=8, id=_ICMP_ID, seq=1) / Raw(bytes(2992))
        rep = IP(src=s.ip, dst=c.ip, ttl=64, id=1) / ICMP(type=0, id=_ICMP_ID, seq=1) / Raw(bytes(2992))
        out += [_frag_tpl(e / f, True, 10 * i) for i, f in enumerate(_fragment(req, 1480))]
        e_s = _eth(s, s.zone)
        out += [_frag_tpl(e_s / f, False, 900 + 10 * i) for i, f in enumerate(_fragment(rep, 1480))]
        return out
    dgram = IP(src=c.ip, dst=s.ip, ttl=64, id=1) / UDP(sport=_CPORT, dport=case.dport) / Raw(b"INVITE " + bytes(2400))
    frags = _fragment(dgram, 1480)
    if case.kind == "overlap":  # the second fragment starts inside the first (offset 8 bytes * 100)
        second = IP(src=c.ip, dst=s.ip, ttl=64, id=1, frag=100, proto=17) / Raw(bytes(1000))
        frags = [frags[0], second]
    return [_frag_tpl(e / f, True, 10 * i) for i, f in enumerate(frags)]


def _fragment(pkt: Packet, size: int) -> list[Packet]:
    frags: list[Packet] = fragment(pkt, size)  # type: ignore[no-untyped-call]
    return frags


def _frag_tpl(pkt: Packet, c2s: bool, dt_us: int) -> _Tpl:
    frame = raw(pkt)
    return _Tpl(frame, c2s, dt_us, frame[ETH + 9])


# --- writing ---------------------------------------------------------------------------------
# The first packet of a demo capture: Monday 2026-01-05 09:00:00 JST, a working morning.
EPOCH_US = 1_767_571_200_000_000


class _Writer:
    """Collects (timestamp, record) pairs; records are sorted by time when the file is written."""

    def __init__(self, label: bool) -> None:
        self.recs: list[tuple[int, int, bytes]] = []  # (ts, seq for a stable order, record)
        self.label = label
        self.labels: dict[tuple[str, str, int], int] = {}
        self.nbytes = 0

    def add(self, ts: int, frame: bytes | bytearray) -> None:
        n = len(frame)
        rec = _REC.pack(ts // 1_000_000, ts % 1_000_000, n, n) + frame
        self.recs.append((ts, len(self.recs), rec))
        self.nbytes += n

    def write(self, path: Path) -> None:
        self.recs.sort()
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))  # pcap, µs, Ethernet
            f.write(b"".join(r[2] for r in self.recs))


class _Synth:
    def __init__(self, seed: int, label: bool) -> None:
        self.rng = random.Random(seed)
        self.w = _Writer(label)
        self.flows: list[FlowInfo] = []
        self.ports: dict[tuple[int, str], int] = {}  # (case, client ip) -> last client port
        self.ip_id = 0

    def _next_port(self, ci: int, client_ip: str) -> int:
        # Client ports go up per (case, client) like an OS's ephemeral allocator, so two flows of a
        # capture never share a 5-tuple (up to ~28k flows per case and client).
        p = self.ports.get((ci, client_ip), 32768 + self.rng.randrange(1000)) + 1
        if p > 60999:
            p = 32768
        self.ports[(ci, client_ip)] = p
        return p

    def flow(self, ci: int, script: _FlowScript, start: int, client_ip: str | None = None) -> None:
        case = script.case
        cip = client_ip or script.client.ip
        sip = script.server.ip
        cpk = ipaddress.IPv4Address(cip).packed
        spk = ipaddress.IPv4Address(sip).packed
        rng = self.rng
        if case.kind in ("icmp", "orphan-icmp"):
            cport = sport = rng.randrange(1, 0xFFFF)  # echo identifier
            dport = 0
        elif case.kind == "orphan":  # the sender plays a server answering an ephemeral port
            cport = sport = case.dport
            dport = self._next_port(ci, sip)
        elif case.kind in ("frag", "overlap", "arp"):  # fixed frames: only IP ids are patched
            sport, dport = (_ICMP_ID, 0) if case.proto == "icmp" else (_CPORT, case.dport)
            cport = sport
        else:
            cport = sport = self._next_port(ci, cip)
            dport = case.dport
        isn_c, isn_s = rng.getrandbits(32), rng.getrandbits(32)
        ca = _words32(int.from_bytes(cpk, "big"))
        sa = _words32(int.from_bytes(spk, "big"))
        cmac = b"\x02\x00" + cpk
        proto = script.tpls[0].proto
        w = self.w
        label = w.label
        base_id = rng.getrandbits(16)
        frag_id = rng.getrandbits(16)
        if label:  # reserve two ids of the capture-wide sequence for the datagrams' fragments
            frag_id = (self.ip_id + 1) & 0xFFFF
            self.ip_id = (self.ip_id + 2) & 0xFFFF
        for k, t in enumerate(script.tpls):
            buf = bytearray(t.frame)
            if t.proto == 0:  # ARP: fixed frame
                w.add(start + t.dt_us, buf)
                continue
            if t.c2s:
                buf[26:30], buf[30:34] = cpk, spk
                if client_ip:
                    buf[6:12] = cmac
            else:
                buf[26:30], buf[30:34] = spk, cpk  # to the gateway's MAC: nothing to patch
            if label:  # demo: ids unique over the whole capture, so (src, dst, id) names a packet
                self.ip_id = ipid = (self.ip_id + 1) & 0xFFFF
                if t.l4_csum_off < 0:  # fragments of one datagram must keep one id
                    ipid = frag_id if t.c2s else (frag_id + 1) & 0xFFFF
            else:
                ipid = frag_id if t.l4_csum_off < 0 else (base_id + k) & 0xFFFF
            _H.pack_into(buf, 18, ipid)
            _ip_checksum(buf)
            if label:
                src, dst = (cip, sip) if t.c2s else (sip, cip)
                self.w.labels[(src, dst, ipid)] = ci
            off = t.l4_csum_off
            if off >= 0:
                l4 = ETH + (buf[ETH] & 0x0F) * 4
                if t.proto == 6:
                    if t.c2s:
                        seq = (t.rel_seq + isn_c) & 0xFFFFFFFF
                        ack = (t.rel_ack + isn_s) & 0xFFFFFFFF if t.has_ack else 0
                        _HH.pack_into(buf, l4, cport, dport)
                    else:
                        seq = (t.rel_seq + isn_s) & 0xFFFFFFFF
                        ack = (t.rel_ack + isn_c) & 0xFFFFFFFF if t.has_ack else 0
                        _HH.pack_into(buf, l4, dport, cport)
                    _I.pack_into(buf, l4 + 4, seq)
                    _I.pack_into(buf, l4 + 8, ack)
                    s = t.base + ca + sa + cport + dport + _words32(seq) + _words32(ack)
                    _H.pack_into(buf, off, ~_fold(s) & 0xFFFF)
                elif t.proto == 17:
                    if t.c2s:
                        _HH.pack_into(buf, l4, cport, dport)
                    else:
                        _HH.pack_into(buf, l4, dport, cport)
                    c = ~_fold(t.base + ca + sa + cport + dport) & 0xFFFF
                    _H.pack_into(buf, off, c or 0xFFFF)  # 0 would mean "no checksum"
                else:  # ICMP echo: identifier
                    seqno = _H.unpack_from(buf, l4 + 6)[0]
                    _H.pack_into(buf, l4 + 4, cport)
                    _H.pack_into(buf, off, ~_fold(t.base + cport + seqno) & 0xFFFF)
            w.add(start + t.dt_us, buf)
        self.flows.append(FlowInfo(ci, cip, sip, proto, sport, dport, len(script.tpls), start))

    def result(self, path: Path) -> SynthResult:
        self.w.write(path)
        return SynthResult(path, len(self.w.recs), self.w.nbytes, self.flows, self.w.labels)


def demo_capture(path: str | Path, seed: int = 1) -> SynthResult:
    """Every case once, one after the other (a second apart), with per-packet labels."""
    syn = _Synth(seed, label=True)
    for ci, case in enumerate(CASES):
        script = _build_script(case, random.Random(f"{seed}:{case.name}"), 2)
        syn.flow(ci, script, EPOCH_US + ci * 1_000_000)
    return syn.result(Path(path))


# Bench mix: (case name, relative weight, size variants). Most flows are the allowed bulk and
# interactive ones a real gateway carries; denied, UDP, ICMP and odd packets are a minority.
_BENCH_MIX: tuple[tuple[str, float, tuple[int, ...]], ...] = (
    ("lgwan-to-asp-https", 30, (1, 4, 16, 64, 160)),
    ("mynumber-to-chukan-https", 12, (1, 4, 16, 64)),
    ("mynumber-server-to-chukan-https", 4, (4, 64, 160)),
    ("lgwan-mail-to-wan-smtp", 8, (1, 8, 40)),
    ("relay-to-lgwan-mail-smtp", 6, (1, 8, 40)),
    ("lgwan-mail-to-relay-smtp", 3, (1, 8)),
    ("lgwan-to-browser-rdp", 6, (8, 20)),
    ("lgwan-to-chukan-ping", 2, (1,)),
    ("wan-to-lgwan-ping", 1, (1,)),
)


def bench_capture(path: str | Path, packets: int = 1_000_000, flows: int = 10_000, seed: int = 1) -> SynthResult:
    """A mixed capture of at least `packets` packets in at least `flows` flows over all cases.

    Flows start at random times within a window and their packets interleave. Every case (all
    zone pairs, denied ones, orphans, fragments) appears; the allowed bulk flows make up most
    packets. Closed and denied flows stay in an engine's table until their timeouts, so the table
    holds thousands of entries as in a real office network.
    """
    rng = random.Random(seed)
    syn = _Synth(seed, label=False)
    by_name = {c.name: i for i, c in enumerate(CASES)}
    scripts: dict[tuple[int, int], _FlowScript] = {}

    def script(ci: int, size: int) -> _FlowScript:
        key = (ci, size)
        if key not in scripts:
            scripts[key] = _build_script(CASES[ci], random.Random(f"{seed}:{ci}:{size}"), size)
        return scripts[key]

    mix = [(by_name[n], w, sizes) for n, w, sizes in _BENCH_MIX]
    others = [i for i, c in enumerate(CASES) if c.name not in {n for n, _, _ in _BENCH_MIX}]
    window = max(10_000_000, flows * 2_000)  # µs
    n_flows = 0
    n_packets = 0

    def client_ip(ci: int) -> str | None:
        case = CASES[ci]
        if not case.vary_src:
            return None
        net = ipaddress.IPv4Network(ZONE_NETS[case.src_zone])
        return str(net.network_address + rng.randrange(100, 200))  # lab hosts are below .100

    # one flow of every case first (so every zone pair and odd case is there even in a small
    # capture), then ~12% of flows are the rest of the case list (denied, UDP, orphans,
    # fragments, ARP) in turn, and the others the weighted mix
    n_others = 0
    while n_flows < flows or n_packets < packets:
        if n_flows < len(CASES):
            ci, size = n_flows, 1
        elif rng.random() < 0.12:
            ci, size = others[n_others % len(others)], 1
            n_others += 1
        else:
            ci, _, sizes = rng.choices(mix, weights=[m[1] for m in mix])[0]
            size = rng.choice(sizes)
        sc = script(ci, size)
        syn.flow(ci, sc, EPOCH_US + rng.randrange(window), client_ip(ci))
        n_flows += 1
        n_packets += len(sc.tpls)
    return syn.result(Path(path))


def iter_cases_by_zone_pair() -> Iterator[tuple[tuple[str, str], list[Case]]]:
    groups: dict[tuple[str, str], list[Case]] = {}
    for c in CASES:
        groups.setdefault((c.src_zone, c.dst_zone), []).append(c)
    yield from groups.items()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.synth", description="write a synthetic lab capture")
    p.add_argument("out", help="output pcap")
    p.add_argument("--bench", action="store_true", help="the large mixed capture instead of the demo one")
    p.add_argument("--packets", type=int, default=1_000_000)
    p.add_argument("--flows", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    r = bench_capture(a.out, a.packets, a.flows, a.seed) if a.bench else demo_capture(a.out, a.seed)
    print(f"{r.path}: {r.packets} packets, {len(r.flows)} flows, {r.bytes} bytes of frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
