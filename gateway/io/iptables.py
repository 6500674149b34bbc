"""iptables backend: the gateway's own chains, installed atomically for IPv4 and IPv6.

Layout (both families, `iptables-restore --noflush` / `ip6tables-restore --noflush`, one transaction
per family, so the kernel never sees a half-installed ruleset):

    filter FORWARD      -> LGWAN-FWD (always rule 1)
        LGWAN-FWD:  ctstate INVALID            -> DROP      (optional, see docs/operations.md)
                    ctstate ESTABLISHED and connmark == current generation|offload -> ACCEPT
                    everything else            -> NFQUEUE (no --queue-bypass unless fail_mode = "open")
                    (workers > 1, balance = "connection": a connection's worker is a conntrack
                    label, given round-robin to its first packet (ctstate NEW, xt_statistic nth);
                    one NFQUEUE rule per label; flows without one fall through to the "flow" rules)
                    (workers > 1, balance = "flow": HMARK puts a symmetric hash of the 5-tuple
                    into the packet mark, one NFQUEUE rule per mark value picks the worker)
    mangle POSTROUTING  -> LGWAN-MANGLE (always rule 1)
        LGWAN-MANGLE: packet mark has the offload bit and ctstate ESTABLISHED (TCP: no SYN flag)
                      -> CONNMARK --save-mark of the gateway's mark bits only

The daemon's verdict puts `generation|offload` into the packet mark of packets of allowed,
non-inspected flows; mangle POSTROUTING copies it into the connmark; from then on FORWARD accepts
the flow in the kernel. A reload installs the accept rule of a new generation, so every offloaded
flow comes back to the queue on its next packet and is decided again.

The kernel has no NFQA_CT support (see lab-facts): the mark must travel through the packet mark.
This module only builds text and runs the iptables tools; it keeps no state of its own, the
kernel's ruleset is the state (the running generation is read back from it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

FILTER_CHAIN = "LGWAN-FWD"
MANGLE_CHAIN = "LGWAN-MANGLE"

# Mark bits the gateway owns (the low 16 bits stay free for other tools). Bit 31 says "offloaded
# by the gateway", bits 16..30 carry the policy generation (1..32767, wrapping, never 0).
MARK_MASK = 0xFFFF0000
OFFLOAD_BIT = 0x80000000
GEN_SHIFT = 16
GEN_MAX = 0x7FFF

FAMILIES = (4, 6)
GEN_COMMENT = "lgwan-gateway mark generation "

Runner = Callable[[Sequence[str], str | None], str]


class IptablesError(RuntimeError):
    """An iptables tool failed; the message carries its stderr."""


def offload_mark(generation: int) -> int:
    """The packet/connmark value of flows offloaded under `generation` (1..GEN_MAX)."""
    if not 1 <= generation <= GEN_MAX:
        raise ValueError(f"mark generation {generation} out of range 1..{GEN_MAX}")
    return OFFLOAD_BIT | (generation << GEN_SHIFT)


def next_generation(current: int | None) -> int:
    """The generation after `current` (1 when no rules are installed: no connmark of ours can
    exist then, except on flows that passed while the rules were removed by hand)."""
    if current is None:
        return 1
    return current % GEN_MAX + 1


@dataclass(frozen=True)
class RulesConfig:
    queue_num: int = 0
    workers: int = 1  # > 1: queues queue_num .. queue_num+workers-1, spread by `balance`
    # connection: round-robin over new connections, kept in a conntrack label (N sessions opened
    # in a row are N workers, up to `workers`); flow: a symmetric hash of addresses, ports and
    # protocol (HMARK), so the parallel sessions of one relay->server pair spread over the workers
    # (by chance: 2 sessions share one of 2 workers half the time); addresses: the kernel's
    # --queue-balance (address pair and protocol only: one busy pair is one worker)
    balance: str = "connection"
    fail_open: bool = False  # --queue-bypass: traffic passes UNFILTERED while no daemon listens
    offload: bool = True
    drop_invalid: bool = True
    # mark generation of the running policy; kept in a comment of the queue rule so that the next
    # start (after a stop or a crash) moves to a new generation and trusts no older mark
    generation: int = 1
    # accept the current generation's offloaded flows in the kernel; False while the daemon is
    # stopped: then every packet goes to the queue, which drops it while nobody listens
    accept_offloaded: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.generation <= GEN_MAX:
            raise ValueError(f"mark generation {self.generation} out of range 1..{GEN_MAX}")
        if not 0 <= self.queue_num <= 65535 or self.workers < 1 or self.queue_num + self.workers - 1 > 65535:
            raise ValueError(f"bad queue range {self.queue_num} + {self.workers} workers")
        if self.balance not in BALANCE:
            raise ValueError(f"balance {self.balance!r}: one of {', '.join(BALANCE)}")


BALANCE = ("connection", "flow", "addresses")  # [daemon] balance (the config model's Literal; a test keeps them equal)
FIREWALLS = ("iptables", "nft", "auto")  # [daemon] firewall: the rules backend (gateway.daemon.select_firewall)
# HMARK's hash seed: fixed, so a restart or reload keeps every flow on the same queue number
HMARK_SEED = 0x4C475741
# balance = "connection": conntrack label WORKER_LABEL + i says "worker i" (labels are 128 bits apart
# from the connmark, whose high half carries the offload generation; the low labels stay for others)
WORKER_LABEL = 64


def _bypass(cfg: RulesConfig) -> str:
    return " --queue-bypass" if cfg.fail_open else ""


def _to_worker(cfg: RulesConfig, i: int) -> str:
    """The NFQUEUE target of worker i (queue_num + i)."""
    return f"-j NFQUEUE --queue-num {cfg.queue_num + i}{_bypass(cfg)}"


def queue_target(cfg: RulesConfig) -> str:
    if cfg.workers > 1:
        # the kernel hashes the (sorted) address pair and protocol: both directions of a flow
        # reach the same queue, hence the same worker and the same flow table
        return f"-j NFQUEUE --queue-balance {cfg.queue_num}:{cfg.queue_num + cfg.workers - 1}{_bypass(cfg)}"
    return _to_worker(cfg, 0)


def flow_balance_rules(cfg: RulesConfig) -> list[str]:
    """workers > 1, balance = "flow": HMARK writes hash % workers + 1 into the packet mark (the
    hash orders addresses and ports, so both directions of a flow get the same value; ICMP errors
    hash their embedded header, so they follow their flow), then one NFQUEUE rule per value.
    HMARK replaces the whole packet mark of the packets it queues (other tools' low bits on them
    are lost; the verdict then sets the gateway's own bits only). Conntrack has reassembled IP
    fragments before FORWARD, so ports are always there."""
    if cfg.workers <= 1 or cfg.balance not in ("flow", "connection"):
        return []
    rules = [
        "-j HMARK --hmark-tuple src,dst,sport,dport,proto "
        f"--hmark-mod {cfg.workers} --hmark-offset 1 --hmark-rnd 0x{HMARK_SEED:x}"
    ]
    return rules + [f"-m mark --mark 0x{i + 1:x} {_to_worker(cfg, i)}" for i in range(cfg.workers)]


def connection_balance_rules(cfg: RulesConfig) -> list[str]:
    """workers > 1, balance = "connection": a packet whose connection has a worker label goes to
    that worker's queue; the first packet of a new connection (ctstate NEW) takes the next worker
    in turn and labels the connection with it. Rule i matches every (N-i)-th of the packets that
    reach it (xt_statistic nth, one counter per rule), the last one every packet: the classic
    round-robin chain, so N new connections in a row go to N different workers. The label is set
    on the new conntrack before the packet is queued; the reply direction shares the conntrack,
    so both directions reach one worker. A connection without a label (tracked before these rules
    came, or a conntrack without the labels extension, where `--set` does not match) falls
    through to the "flow" rules after these: a stable hash, so it still stays on one worker. A
    retransmitted SYN finds its label in the sticky rules first and is not dealt again."""
    if cfg.workers <= 1 or cfg.balance != "connection":
        return []
    n = cfg.workers
    sticky = [f'-m connlabel --label "{WORKER_LABEL + i}" {_to_worker(cfg, i)}' for i in range(n)]
    deal = [
        f"-m conntrack --ctstate NEW -m statistic --mode nth --every {n - i} --packet 0 "
        f'-m connlabel --label "{WORKER_LABEL + i}" --set {_to_worker(cfg, i)}'
        for i in range(n)
    ]
    return sticky + deal


def chain_rules(cfg: RulesConfig) -> dict[str, list[str]]:
    """table -> the rules of the gateway's chain in that table, in iptables-save's canonical form
    (so a read-back compares equal)."""
    save_mark = (
        f"-m mark --mark 0x{OFFLOAD_BIT:x}/0x{OFFLOAD_BIT:x} -m conntrack --ctstate ESTABLISHED "
        f"-j CONNMARK --save-mark --nfmask 0x{MARK_MASK:x} --ctmask 0x{MARK_MASK:x}"
    )
    fwd: list[str] = []
    mangle: list[str] = []
    if cfg.drop_invalid:
        fwd.append("-m conntrack --ctstate INVALID -j DROP")
    if cfg.offload:
        # TCP: save only after the handshake (no SYN flag), so the engine sees SYN and SYN+ACK and
        # its flow is `established`; non-TCP: after the first reply (ctstate ESTABLISHED)
        mangle.append(f"-p tcp -m tcp --tcp-flags SYN NONE {save_mark}")
        mangle.append(f"! -p tcp {save_mark}")
        if cfg.accept_offloaded:
            mark = offload_mark(cfg.generation)
            # ESTABLISHED, not RELATED: a related connection (helpers) inherits the master's
            # connmark and must be decided by the engine itself
            fwd.append(f"-m conntrack --ctstate ESTABLISHED -m connmark --mark 0x{mark:x}/0x{MARK_MASK:x} -j ACCEPT")
    fwd.extend(connection_balance_rules(cfg))
    fwd.extend(flow_balance_rules(cfg))
    # the last rule (with flow balancing reached only by a packet HMARK could not hash, e.g. a
    # truncated header) keeps the generation's comment
    fwd.append(f'-m comment --comment "{GEN_COMMENT}{cfg.generation}" {queue_target(cfg)}')
    return {"mangle": mangle, "filter": fwd}


HOOKS = {"filter": ("FORWARD", FILTER_CHAIN), "mangle": ("POSTROUTING", MANGLE_CHAIN)}


@dataclass
class TableState:
    """What iptables-save shows of one table: the hook chain's rules and our chain's rules."""

    hook_rules: list[str] = field(default_factory=list)  # rules of FORWARD / POSTROUTING (no "-A X ")
    chain_exists: bool = False
    chain_rules: list[str] = field(default_factory=list)
    chain_counters: list[tuple[int, int]] = field(default_factory=list)  # (packets, bytes) with -c

    def jump_count(self, chain: str) -> int:
        return sum(1 for r in self.hook_rules if r == f"-j {chain}")

    def hook_ok(self, chain: str) -> bool:
        """Our jump is the first rule of the hook chain and appears once."""
        return bool(self.hook_rules) and self.hook_rules[0] == f"-j {chain}" and self.jump_count(chain) == 1


State = dict[str, TableState]  # table -> state


def parse_save(text: str) -> State:
    """Parse iptables-save output into the parts this module cares about."""
    state: State = {t: TableState() for t in HOOKS}
    table: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        counters = (0, 0)
        if line.startswith("["):  # iptables-save -c: "[packets:bytes] -A CHAIN ..."
            head, _, line = line.partition("] ")
            pk, _, by = head[1:].partition(":")
            counters = (int(pk), int(by))
        if line.startswith("*"):
            table = line[1:]
            continue
        if table not in HOOKS:
            continue
        hook, chain = HOOKS[table]
        st = state[table]
        if line.startswith(f":{chain} "):
            st.chain_exists = True
        elif line.startswith(f"-A {hook} "):
            st.hook_rules.append(line[len(hook) + 4 :])
        elif line.startswith(f"-A {chain} "):
            st.chain_rules.append(line[len(chain) + 4 :])
            st.chain_counters.append(counters)
    return state


_GEN_RE = re.compile(re.escape(GEN_COMMENT) + r"(\d+)")


def installed_generation(state: State) -> int | None:
    """The mark generation recorded in the installed queue rule, if any."""
    for rule in state["filter"].chain_rules:
        m = _GEN_RE.search(rule)
        if m:
            return int(m.group(1))
    return None


def restore_input(cfg: RulesConfig, state: State | None = None) -> str:
    """The iptables-restore --noflush input that installs `cfg` over `state` (None: a clean host).

    Declaring `:CHAIN - [0:0]` with --noflush creates the chain or flushes it; every existing jump
    to it is deleted and one is inserted at position 1, all in one transaction (idempotent, and
    a jump someone moved below an ACCEPT rule is put back on top)."""
    rules = chain_rules(cfg)
    out: list[str] = []
    for table in ("mangle", "filter"):
        hook, chain = HOOKS[table]
        out.append(f"*{table}")
        out.append(f":{chain} - [0:0]")
        out.extend(f"-A {chain} {r}" for r in rules[table])
        jumps = state[table].jump_count(chain) if state else 0
        out.extend(f"-D {hook} -j {chain}" for _ in range(jumps))
        out.append(f"-I {hook} 1 -j {chain}")
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def remove_input(state: State) -> str:
    """The iptables-restore --noflush input that removes the gateway's chains (empty: nothing to do)."""
    out: list[str] = []
    for table in ("mangle", "filter"):
        hook, chain = HOOKS[table]
        st = state[table]
        if not st.chain_exists and not st.jump_count(chain):
            continue
        out.append(f"*{table}")
        out.extend(f"-D {hook} -j {chain}" for _ in range(st.jump_count(chain)))
        if st.chain_exists:
            out.append(f"-F {chain}")
            out.append(f"-X {chain}")
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


def run_tool(argv: Sequence[str], stdin: str | None, error: type[IptablesError] = IptablesError) -> str:
    """Run a firewall tool (iptables-*, nft) with `stdin`; its stdout, or `error` with its stderr."""
    try:
        proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise error(f"{argv[0]}: {exc}") from exc
    if proc.returncode != 0:
        raise error(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def tool(family: int, name: str) -> str:
    """'iptables-restore' / 'ip6tables-save' ... for the family (Debian's default backend)."""
    prefix = "iptables" if family == 4 else "ip6tables"
    return f"{prefix}-{name}" if name else prefix


class Iptables:
    """Installs, checks and removes the gateway's rules. `runner` is replaceable for tests."""

    name = "iptables"

    def __init__(self, runner: Runner | None = None, families: Sequence[int] = FAMILIES) -> None:
        self._run = runner or run_tool
        self.families = tuple(families)
        self._expected: dict[int, State] = {}

    def read_state(self, family: int) -> State:
        return parse_save(self._run([tool(family, "save")], None))

    def installed_generation(self) -> int | None:
        return installed_generation(self.read_state(self.families[0]))

    def plan(self, cfg: RulesConfig) -> dict[int, str]:
        """family -> restore input for the current kernel state (what `install` would apply)."""
        return {fam: restore_input(cfg, self.read_state(fam)) for fam in self.families}

    def install(self, cfg: RulesConfig) -> None:
        """Install `cfg` for every family (one atomic restore each); retried once if the ruleset
        changed between reading it and applying (a -D of a vanished rule fails the transaction)."""
        for fam in self.families:
            for attempt in range(2):
                text = restore_input(cfg, self.read_state(fam))
                try:
                    self._run([tool(fam, "restore"), "--noflush"], text)
                    break
                except IptablesError:
                    if attempt:
                        raise
            self._expected[fam] = self.read_state(fam)

    def intact(self) -> bool:
        """True when every family still has exactly the rules `install` left (checker)."""
        for fam in self.families:
            want = self._expected.get(fam)
            if want is None:
                return False
            have = self.read_state(fam)
            for table, (_, chain) in HOOKS.items():
                if not have[table].hook_ok(chain) or have[table].chain_rules != want[table].chain_rules:
                    return False
        return True

    def offloaded(self) -> tuple[int, int]:
        """(packets, bytes) the kernel accepted for offloaded flows, summed over the families: the
        counters of the connmark ACCEPT rule (they restart when a reload swaps the rule)."""
        pk = by = 0
        for fam in self.families:
            st = parse_save(self._run([tool(fam, "save"), "-c", "-t", "filter"], None))["filter"]
            for rule, (p, b) in zip(st.chain_rules, st.chain_counters, strict=True):
                if "-m connmark" in rule and rule.endswith("-j ACCEPT"):
                    pk += p
                    by += b
        return pk, by

    def remove(self) -> None:
        for fam in self.families:
            text = remove_input(self.read_state(fam))
            if text:
                self._run([tool(fam, "restore"), "--noflush"], text)
        self._expected.clear()


def available() -> bool:
    return all(shutil.which(tool(f, n)) for f in FAMILIES for n in ("save", "restore"))
