"""The lab's fixed addressing plan (../shared/lab-facts.md): zones, hosts, and what each host serves.

Kept as plain data so the lab builder, the CLI, the tests and the docs read one table.
"""

from __future__ import annotations

from dataclasses import dataclass

GATEWAY = "gateway"
GATEWAY_OCTET = 254  # .254, not .1: vagrant-libvirt takes .1 of each private network


@dataclass(frozen=True)
class Zone:
    name: str  # also the name of the zone's bridge (the gateway's leg) in the gateway namespace
    tier: str
    network: str  # "a.b.c.0/24"

    @property
    def prefix(self) -> str:
        return self.network.rsplit(".", 1)[0]

    @property
    def gateway_address(self) -> str:
        return f"{self.prefix}.{GATEWAY_OCTET}"


@dataclass(frozen=True)
class Host:
    name: str
    zone: Zone
    octet: int
    # TCP ports with a plain responder, TCP ports with an SMTP server (Maildir), UDP echo ports
    tcp: tuple[int, ...]
    smtp: tuple[int, ...]
    udp: tuple[int, ...]

    @property
    def address(self) -> str:
        return f"{self.zone.prefix}.{self.octet}"

    @property
    def bridge_port(self) -> str:
        """The gateway-side end of the host's veth (<= 15 characters: IFNAMSIZ)."""
        return f"{self.zone.name}-{self.octet}"


MYNUMBER = Zone("mynumber", "mynumber", "198.18.10.0/24")
LGWAN = Zone("lgwan", "lgwan", "198.18.20.0/24")
LGWAN_WAN = Zone("lgwan-wan", "lgwan", "198.18.30.0/24")
INTERNET = Zone("internet", "internet", "198.19.40.0/24")
ZONES: tuple[Zone, ...] = (MYNUMBER, LGWAN, LGWAN_WAN, INTERNET)

# Every host listens on the same ports, allowed or not, so that a blocked flow is proven blocked by
# the gateway and not by a closed port: 22 (ssh-like), 25 (mail), 443 (https/ASP), 445 (file
# sharing), 3389 (画面転送); UDP 7 (echo) and 53 (dns-like). Port 25 is a real SMTP server with a
# Maildir on the mail hosts (lgwan-mail, internet-relay) and on the LGWAN-WAN hosts (LGWAN mail).
_TCP = (22, 25, 443, 445, 3389)
_UDP = (7, 53)


def _host(name: str, zone: Zone, octet: int, *, smtp: bool = False) -> Host:
    tcp = tuple(p for p in _TCP if not (smtp and p == 25))
    return Host(name, zone, octet, tcp=tcp, smtp=(25,) if smtp else (), udp=_UDP)


HOSTS: tuple[Host, ...] = (
    _host("mynumber-terminal", MYNUMBER, 10),
    _host("mynumber-server", MYNUMBER, 20),
    _host("lgwan-terminal", LGWAN, 10),
    _host("lgwan-mail", LGWAN, 25, smtp=True),
    _host("lgwan-file", LGWAN, 30),
    _host("chukan", LGWAN_WAN, 40, smtp=True),
    _host("lgwan-asp", LGWAN_WAN, 50, smtp=True),
    _host("internet-relay", INTERNET, 25, smtp=True),
    _host("internet-browser", INTERNET, 80),
    _host("internet-host", INTERNET, 100),
)
HOSTS_BY_NAME: dict[str, Host] = {h.name: h for h in HOSTS}
HOST_NAMES: tuple[str, ...] = (*HOSTS_BY_NAME, GATEWAY)


def address_of(name: str) -> str:
    """The address of a host; the gateway's is its address in the first zone."""
    if name == GATEWAY:
        return ZONES[0].gateway_address
    return HOSTS_BY_NAME[name].address
