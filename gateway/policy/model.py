"""The policy file's schema (pydantic v2).

Only the shape of each value is checked here: every field is validated on its own, so one bad
value never hides another. Relations between fields, rules and zones (and the 三層 invariants)
are checked in `checks.py`, where each finding can point at the exact key that caused it.

All models are strict (TOML already gives typed values: `log = "yes"` is an error, not true)
and forbid unknown keys (inspect profiles are gateway.sanitize.profile.MailProfile).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator

from gateway.sanitize.profile import MailProfile

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NAME_PATTERN = r"^[A-Za-z0-9._-]+$"
_NAME_RE = re.compile(NAME_PATTERN)
ANY_ZONE = "*"

# ICMP type names accepted in `icmp_types`, per protocol. Error types (unreachable, time
# exceeded, ...) are listed so they can be refused with a good message: the engine handles them
# as "related" to the flow they quote and never runs rules for them.
ICMP_TYPES: dict[str, int] = {
    "echo-reply": 0,
    "destination-unreachable": 3,
    "source-quench": 4,
    "redirect": 5,
    "echo-request": 8,
    "router-advertisement": 9,
    "router-solicitation": 10,
    "time-exceeded": 11,
    "parameter-problem": 12,
    "timestamp-request": 13,
    "timestamp-reply": 14,
}
ICMPV6_TYPES: dict[str, int] = {
    "destination-unreachable": 1,
    "packet-too-big": 2,
    "time-exceeded": 3,
    "parameter-problem": 4,
    "echo-request": 128,
    "echo-reply": 129,
    "router-solicitation": 133,
    "router-advertisement": 134,
    "neighbor-solicitation": 135,
    "neighbor-advertisement": 136,
}
ICMP_ERROR_TYPES = frozenset({3, 4, 5, 11, 12})
ICMPV6_ERROR_TYPES = frozenset({1, 2, 3, 4})


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse_network(v: object) -> IPNetwork:
    if not isinstance(v, str):
        raise ValueError(f'must be a CIDR string such as "198.18.10.0/24", got {v!r}')
    try:
        return ipaddress.ip_network(v.strip(), strict=True)
    except ValueError as exc:
        # ipaddress says "has host bits set" for 198.18.10.5/24: usually a typo of the mask
        raise ValueError(f"invalid network {v!r}: {exc}") from None


def _parse_port_range(v: object) -> tuple[int, int]:
    lo: int
    hi: int
    if _is_int(v):
        assert isinstance(v, int)
        lo = hi = v
    elif isinstance(v, str) and re.fullmatch(r"\s*\d+\s*(-\s*\d+\s*)?", v):
        parts = [int(p) for p in v.split("-")]
        lo, hi = parts[0], parts[-1]
    else:
        raise ValueError(f'a port is a number (25) or an inclusive range string ("1024-65535"), got {v!r}')
    if not (0 <= lo <= hi <= 65535):
        raise ValueError(f"port range must satisfy 0 <= low <= high <= 65535, got {v!r}")
    return lo, hi


def _parse_icmp_type(v: object) -> int | str:
    # names are resolved against the rule's proto later (echo-request is 8 in ICMP, 128 in ICMPv6)
    if _is_int(v):
        assert isinstance(v, int)
        if not 0 <= v <= 255:
            raise ValueError(f"an ICMP type is 0..255, got {v}")
        return v
    if isinstance(v, str) and (v in ICMP_TYPES or v in ICMPV6_TYPES):
        return v
    names = ", ".join(sorted(set(ICMP_TYPES) | set(ICMPV6_TYPES)))
    raise ValueError(f"unknown ICMP type {v!r}: use a number 0..255 or one of {names}")


def parse_zone_ref(v: object) -> tuple[str, ...]:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not items:
        raise ValueError(f'a zone name, a list of zone names, or "*" (every zone), got {v!r}')
    out: list[str] = []
    for item in items:
        if not isinstance(item, str) or not (item == ANY_ZONE or _NAME_RE.match(item)):
            raise ValueError(f"invalid zone name {item!r}")
        if item in out:
            raise ValueError(f"zone {item!r} is listed twice")
        out.append(item)
    if ANY_ZONE in out and len(out) > 1:
        raise ValueError('"*" already means every zone: list it alone')
    return tuple(out)


Network = Annotated[IPNetwork, PlainValidator(_parse_network)]
PortRange = Annotated[tuple[int, int], PlainValidator(_parse_port_range)]
IcmpType = Annotated[int | str, PlainValidator(_parse_icmp_type)]
ZoneRef = Annotated[tuple[str, ...], PlainValidator(parse_zone_ref)]
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]
InterfaceName = Annotated[str, Field(pattern=r"^[A-Za-z0-9._@:-]+$", max_length=15)]  # IFNAMSIZ - 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class GatewaySection(_Strict):
    name: Name
    # what the kernel does with queued traffic while no daemon listens: closed = drop (no
    # --queue-bypass), open = pass unfiltered. The adapters read this; the engine never sees it.
    fail_mode: Literal["closed", "open"] = "closed"
    malformed: Literal["drop", "accept"] = "drop"
    description: str = ""


class Zone(_Strict):
    name: Name
    tier: Literal["mynumber", "lgwan", "internet"]
    networks: list[Network] = Field(default_factory=list)
    interfaces: list[InterfaceName] = Field(default_factory=list)
    intra_zone: Literal["allow", "deny"] = "allow"
    description: str = ""


class Rule(_Strict):
    id: Name
    from_: ZoneRef = Field(alias="from")
    to: ZoneRef
    action: Literal["allow", "deny", "inspect"]
    proto: Literal["tcp", "udp", "icmp", "icmpv6", "any"] = "any"
    # None means "any"; an explicit empty list is refused (a template that emptied a host list
    # must not silently widen a rule to every address)
    src: list[Network] | None = Field(default=None, min_length=1)
    dst: list[Network] | None = Field(default=None, min_length=1)
    src_ports: list[PortRange] | None = Field(default=None, min_length=1)
    dst_ports: list[PortRange] | None = Field(default=None, min_length=1)
    icmp_types: list[IcmpType] | None = Field(default=None, min_length=1)
    profile: Name | None = None
    log: bool = False
    exception: Literal["screen_transfer"] | None = None
    description: str = ""


# An inspect profile is the sanitizer's own model (gateway/sanitize/profile.py): every key is
# validated at load time, so a bad profile key or value is reported with FILE:LINE too.
Profile = MailProfile


class Timeouts(_Strict):
    """Idle timeouts in seconds per flow state (defaults: gateway.fastpath.common.Limits)."""

    tcp_syn: float | None = Field(default=None, gt=0)
    tcp_established: float | None = Field(default=None, gt=0)
    tcp_closing: float | None = Field(default=None, gt=0)
    tcp_closed: float | None = Field(default=None, gt=0)
    udp: float | None = Field(default=None, gt=0)
    icmp: float | None = Field(default=None, gt=0)
    other: float | None = Field(default=None, gt=0)


class LimitsSection(_Strict):
    max_flows: int | None = Field(default=None, ge=1, le=100_000_000)
    max_ipv6_ext_headers: int | None = Field(default=None, ge=1, le=64)
    timeouts: Timeouts = Field(default_factory=Timeouts)


def _parse_ip_address(v: object) -> str:
    if not isinstance(v, str):
        raise ValueError(f'must be an IP address string such as "127.0.0.1" or "::1", got {v!r}')
    try:
        return str(ipaddress.ip_address(v.strip()))
    except ValueError:
        raise ValueError(f"{v!r} is not an IP address (host names are not resolved here)") from None


def _parse_log_path(v: object) -> str:
    if not isinstance(v, str) or not v or "\0" in v:
        raise ValueError(f'must be an absolute file path or "-" (stdout), got {v!r}')
    if v != "-" and not v.startswith("/"):
        # the daemon's working directory is / under systemd: a relative path would land there
        raise ValueError(f'must be an absolute file path or "-" (stdout), got {v!r}')
    return v


IPAddressText = Annotated[str, PlainValidator(_parse_ip_address)]
LogPath = Annotated[str, PlainValidator(_parse_log_path)]

DEFAULT_METRICS_ADDRESS = "127.0.0.1"
DEFAULT_METRICS_PORT = 9687


def metrics_address_problem(address: str, allow_remote: bool) -> str | None:
    """Why the metrics endpoint may not listen on `address` (None: it may). The endpoint has no
    authentication and the gateway sits between security zones: only loopback unless allowed."""
    if allow_remote or ipaddress.ip_address(address).is_loopback:
        return None
    return (
        f"{address!r} is not a loopback address: the metrics endpoint has no "
        "authentication and would be reachable from the networks the gateway separates; "
        "set metrics_allow_remote = true to allow it"
    )


class DaemonSection(_Strict):
    """How `lgwan-gateway run` runs (not what it decides). Every key has a command-line option that
    overrides it; gateway.daemon says which ones a reload (SIGHUP) applies."""

    queue: int = Field(default=0, ge=0, le=65535)  # first NFQUEUE number
    workers: int = Field(default=1, ge=1, le=64)  # processes, one queue each: queue .. queue+workers-1
    # how flows are spread over the workers: "connection" deals new connections round-robin and
    # keeps each on its worker with a conntrack label (iptables connlabel / nft ct label), "flow" hashes addresses,
    # ports and protocol (iptables HMARK / nft symhash), "addresses" only the address pair
    # (--queue-balance: one busy relay->server pair is then one worker)
    balance: Literal["connection", "flow", "addresses"] = "connection"
    offload: bool = True  # kernel passes allowed flows after their first packets
    events: LogPath | None = None  # JSON-lines event log; None: no event log
    metrics_port: int = Field(default=DEFAULT_METRICS_PORT, ge=0, le=65535)  # 0: no endpoint
    metrics_address: IPAddressText = DEFAULT_METRICS_ADDRESS
    metrics_allow_remote: bool = False
    rules_check_interval: float = Field(default=5.0, gt=0, le=3600)
    max_batch: int = Field(default=64, ge=1, le=1024)  # packets per recvmmsg / verdict send
    queue_maxlen: int = Field(default=8192, ge=1, le=1_048_576)  # kernel queue length per queue
    # rules backend: iptables (default, tested), nft (refused at start where the kernel cannot
    # queue from nftables), auto (nft when gateway.io.nftables.probe() says it works, else iptables)
    firewall: Literal["iptables", "nft", "auto"] = "iptables"


class PolicyConfig(_Strict):
    gateway: GatewaySection
    zones: list[Zone] = Field(min_length=1)
    rules: list[Rule] = Field(default_factory=list)
    profiles: dict[Name, Profile] = Field(default_factory=dict)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    daemon: DaemonSection = Field(default_factory=DaemonSection)


# model of each table, for "did you mean" hints on unknown keys
SECTION_MODELS: dict[str, type[BaseModel]] = {
    "gateway": GatewaySection,
    "zones": Zone,
    "rules": Rule,
    "profiles": Profile,
    "limits": LimitsSection,
    "daemon": DaemonSection,
}


def field_keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]
