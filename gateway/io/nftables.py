"""nftables backend (optional, detected): the same rules as gateway.io.iptables, in one table.

The iptables backend is the default and the tested one: the kernels this project meets (Debian 12's
6.1 among them, in some builds) can lack nftables' native `queue` expression while NFQUEUE works
through iptables. Where `nft` and the expression are there, `[daemon] firewall = "nft"` (or
`"auto"`, which takes nft only when `probe()` says it works) installs instead:

    table inet lgwan_gateway            (IPv4 and IPv6 in one table, one transaction)
        chain forward      hook forward priority filter
            ct state invalid drop                                     (drop_invalid)
            ct state established ct mark & MASK == MARK counter accept (offload, while running)
            counter queue [flags bypass] num N   comment "lgwan-gateway mark generation G"
                (workers > 1: num N-M, or with balance = "flow": to symhash mod W offset N;
                balance = "connection": first `ct label L+i queue num N+i` per worker, then
                `ct state new numgen inc mod W vmap { i : jump worker<i> }`, where chain
                worker<i> sets label L+i and queues to N+i if it took; symhash last)
        chain postrouting  hook postrouting priority mangle            (offload)
            TCP without SYN / non-TCP, ct state established, meta mark & MASK == MARK
                -> ct mark set ct mark & ~MASK | MARK

The one difference from iptables: nftables on these kernels cannot OR the packet mark into the
connmark (no register-to-register bitwise), so the postrouting rule matches the current
generation's mark and writes it as a constant. A packet marked under an older generation (a
worker not yet reloaded) is then not offloaded: it comes back to the queue and is decided again,
the safe side. The mark layout (gateway.io.iptables: MARK_MASK, OFFLOAD_BIT, generations) is
shared, and so is everything the daemon does with it.

Like the iptables module this keeps no state: the kernel's table is the state.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from typing import Any

from gateway.io.iptables import (
    GEN_COMMENT,
    MARK_MASK,
    WORKER_LABEL,
    IptablesError,
    RulesConfig,
    offload_mark,
    run_tool,
)

TABLE = "lgwan_gateway"
FAMILY = "inet"

Runner = Callable[[Sequence[str], str | None], str]


class NftablesError(IptablesError):
    """`nft` failed; the message carries its stderr. (An IptablesError, so the daemon's handling of
    a failed rules change applies to both backends.)"""


def _flags(cfg: RulesConfig) -> str:
    return "flags bypass " if cfg.fail_open else ""


def _queue_statement(cfg: RulesConfig) -> str:
    flags = _flags(cfg)
    if cfg.workers > 1 and cfg.balance in ("flow", "connection"):
        # symhash: a hash of addresses, ports and protocol that is the same in both directions, so
        # a flow stays on one worker and the sessions of one address pair spread (iptables: HMARK)
        return f"queue {flags}to symhash mod {cfg.workers} offset {cfg.queue_num}"
    # a queue range is balanced by a hash of the address pair, like --queue-balance: both directions
    # of a flow reach the same worker ("fanout" would spread by CPU instead)
    num = f"{cfg.queue_num}-{cfg.queue_num + cfg.workers - 1}" if cfg.workers > 1 else str(cfg.queue_num)
    return f"queue {flags}num {num}"


def ruleset(cfg: RulesConfig, table: str = TABLE) -> str:
    """The `nft -f` input that replaces the gateway's table atomically (add + delete + define in
    one transaction: the kernel never sees the table missing or half-built)."""
    mark = offload_mark(cfg.generation)
    keep = ~MARK_MASK & 0xFFFFFFFF
    fwd = ["type filter hook forward priority filter; policy accept;"]
    if cfg.drop_invalid:
        fwd.append("ct state invalid drop")
    if cfg.offload and cfg.accept_offloaded:
        # established, not related: a related connection inherits the master's connmark and must
        # be decided by the engine itself (as in the iptables rules)
        fwd.append(f"ct state established ct mark & 0x{MARK_MASK:08x} == 0x{mark:08x} counter accept")
    chains = {"forward": fwd}
    if cfg.workers > 1 and cfg.balance == "connection":
        # as the iptables rules: a labelled connection to its worker; a new one dealt round-robin
        # (one numgen counter, a verdict map to the worker's chain that labels and queues it)
        flags = _flags(cfg)
        deal = []
        for i in range(cfg.workers):
            fwd.append(f"ct label {WORKER_LABEL + i} counter queue {flags}num {cfg.queue_num + i}")
            # queued only if the label took (a conntrack from before the rules has no labels):
            # otherwise back to the symhash rule, as every later packet of the flow will be
            chains[f"worker{i}"] = [
                f"ct label set {WORKER_LABEL + i}",
                f"ct label {WORKER_LABEL + i} counter queue {flags}num {cfg.queue_num + i}",
            ]
            deal.append(f"{i} : jump worker{i}")
        fwd.append(f"ct state new numgen inc mod {cfg.workers} vmap {{ {', '.join(deal)} }}")
    fwd.append(f'counter {_queue_statement(cfg)} comment "{GEN_COMMENT}{cfg.generation}"')
    if cfg.offload:
        save = (
            f"ct state established meta mark & 0x{MARK_MASK:08x} == 0x{mark:08x} "
            f"ct mark set ct mark & 0x{keep:08x} | 0x{mark:08x}"
        )
        chains["postrouting"] = [
            "type filter hook postrouting priority mangle; policy accept;",
            # TCP: only after the handshake (no SYN), so the engine sees SYN and SYN+ACK
            f"meta l4proto tcp tcp flags & syn == 0 {save}",
            f"meta l4proto != tcp {save}",
        ]
    out = [f"add table {FAMILY} {table}", f"delete table {FAMILY} {table}", f"table {FAMILY} {table} {{"]
    for name, lines in chains.items():
        out.append(f"\tchain {name} {{")
        out += [f"\t\t{line}" for line in lines]
        out.append("\t}")
    out.append("}")
    return "\n".join(out) + "\n"


def remove_input() -> str:
    return f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"


def _default_runner(argv: Sequence[str], stdin: str | None) -> str:
    return run_tool(argv, stdin, NftablesError)


def _rules_of(listing: dict[str, Any]) -> dict[str, list[Any]]:
    """chain -> its rules' expressions (handles and counter values left out), from `nft -j list`."""
    chains: dict[str, list[Any]] = {}
    for item in listing.get("nftables", []):
        if "chain" in item and item["chain"].get("table") == TABLE:
            chains.setdefault(item["chain"]["name"], [])
        rule = item.get("rule")
        if rule is None or rule.get("table") != TABLE:
            continue
        exprs = [e if "counter" not in e else {"counter": None} for e in rule.get("expr", [])]
        chains.setdefault(rule["chain"], []).append({"expr": exprs, "comment": rule.get("comment")})
    return chains


class Nftables:
    """Installs, checks and removes the gateway's table; the same interface as
    gateway.io.iptables.Iptables, so the daemon drives either. `runner` is replaceable for tests."""

    name = "nft"

    def __init__(self, runner: Runner | None = None) -> None:
        self._run = runner or _default_runner
        self._expected: dict[str, list[Any]] | None = None

    def _listing(self) -> dict[str, list[Any]] | None:
        """The table's chains and rules, or None when the table does not exist."""
        try:
            text = self._run(["nft", "-j", "list", "table", FAMILY, TABLE], None)
        except NftablesError as exc:
            if "No such file or directory" in str(exc):
                return None
            raise
        return _rules_of(json.loads(text))

    def installed_generation(self) -> int | None:
        chains = self._listing()
        for rule in (chains or {}).get("forward", []):
            comment = rule.get("comment") or ""
            if comment.startswith(GEN_COMMENT):
                try:
                    return int(comment[len(GEN_COMMENT) :])
                except ValueError:
                    return None
        return None

    def install(self, cfg: RulesConfig) -> None:
        self._run(["nft", "-f", "-"], ruleset(cfg))
        self._expected = self._listing()

    def intact(self) -> bool:
        """True while the table holds exactly what `install` left (checker: someone may have
        flushed or deleted it; the daemon then installs it again)."""
        return self._expected is not None and self._listing() == self._expected

    def offloaded(self) -> tuple[int, int]:
        """(packets, bytes) of the offload accept rule's counter."""
        try:
            text = self._run(["nft", "-j", "list", "chain", FAMILY, TABLE, "forward"], None)
        except NftablesError:
            return 0, 0
        for item in json.loads(text).get("nftables", []):
            rule = item.get("rule")
            if not rule or not any("accept" in e for e in rule.get("expr", [])):
                continue
            for e in rule["expr"]:
                if "counter" in e and isinstance(e["counter"], dict):
                    return int(e["counter"].get("packets", 0)), int(e["counter"].get("bytes", 0))
        return 0, 0

    def remove(self) -> None:
        self._run(["nft", "-f", "-"], remove_input())
        self._expected = None


def probe(runner: Runner | None = None) -> tuple[bool, str]:
    """Can this host run the nftables backend? `nft --check` of the whole ruleset (queue range,
    ct mark arithmetic, both chains) in a scratch table: the kernel validates it without applying
    it, so a missing `queue` expression shows here, not at the first packet. Needs CAP_NET_ADMIN."""
    if runner is None and not shutil.which("nft"):
        return False, "the nft program is not installed"
    run = runner or _default_runner
    text = ruleset(RulesConfig(queue_num=0, workers=2, offload=True), table=f"{TABLE}_probe")
    try:
        run(["nft", "--check", "-f", "-"], text)
    except NftablesError as exc:
        why = str(exc).splitlines()
        detail = next((line for line in why if "Error" in line), why[0] if why else "")
        if "No such file or directory" in str(exc) and "queue" in str(exc):
            detail = "the kernel has no nftables queue expression (nft_queue); use the iptables backend"
        return False, detail.strip()
    return True, "nft and the kernel accept the ruleset"
