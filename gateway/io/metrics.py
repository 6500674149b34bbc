"""Prometheus metrics of the live daemon, and the `lgwan-gateway stats` table.

The packet loop never touches prometheus_client: workers send plain counter snapshots to the
supervisor a few times a second, and this collector renders the latest ones at scrape time, so a
scrape costs the packet path nothing. Kernel-side figures (queue drops, offloaded flows and
packets) are read when scraped.
"""

from __future__ import annotations

import math
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from gateway.fastpath.common import REASONS, VERDICT_NAMES
from gateway.io.nfqueue import KernelQueueStats

DEFAULT_PORT = 9687
DEFAULT_ADDRESS = "127.0.0.1"


@dataclass
class WorkerSnapshot:
    """What one worker reports (picklable plain data)."""

    worker: int
    queue: int
    pid: int
    engine: dict[str, int] = field(default_factory=dict)  # Engine.counters()
    nfq: dict[str, int] = field(default_factory=dict)  # Queue.stats()
    by_verdict_reason: dict[tuple[int, int], int] = field(default_factory=dict)
    latency_bounds: list[float] = field(default_factory=list)  # seconds, +Inf bucket implied
    latency_counts: list[int] = field(default_factory=list)  # per bucket, last = +Inf
    latency_sum: float = 0.0
    events: int = 0


@dataclass
class DaemonView:
    """Everything the collector renders; the supervisor replaces fields, the scrape thread reads."""

    workers: dict[int, WorkerSnapshot] = field(default_factory=dict)
    reloads_ok: int = 0
    reloads_failed: int = 0
    rules_reinstalled: int = 0
    rules_check_failed: int = 0
    policy_generation: int = 0
    mark_generation: int = 0
    offload: bool = True
    restart_pending: bool = False  # the last reload changed settings that apply at the next restart only
    # scrape-time readers (kernel state); None where not available
    kernel_queues: Callable[[], dict[int, KernelQueueStats]] | None = None
    offloaded_flows: Callable[[], int] | None = None
    offloaded_packets: Callable[[], tuple[int, int]] | None = None


def _sum(view: DaemonView, part: str, key: str) -> int:
    return sum(getattr(w, part).get(key, 0) for w in view.workers.values())


class DaemonCollector:
    """A prometheus_client collector over a DaemonView."""

    def __init__(self, view: DaemonView) -> None:
        self.view = view
        self._lock = threading.Lock()

    def describe(self) -> list[Any]:
        return []  # dynamic: no registration-time collection

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        with self._lock:
            v = self.view
            ws = list(v.workers.values())

            pk = CounterMetricFamily(
                "lgwan_packets", "Queued packets by engine verdict and reason", labels=["verdict", "reason"]
            )
            merged: dict[tuple[int, int], int] = {}
            for w in ws:
                for vr, count in w.by_verdict_reason.items():
                    merged[vr] = merged.get(vr, 0) + count
            for (verdict, reason), count in sorted(merged.items()):
                vname = VERDICT_NAMES[verdict] if 0 <= verdict < len(VERDICT_NAMES) else str(verdict)
                rname = REASONS[reason] if 0 <= reason < len(REASONS) else str(reason)
                pk.add_metric([vname, rname], count)
            yield pk

            wp = CounterMetricFamily("lgwan_worker_packets", "Queued packets per worker", labels=["worker", "queue"])
            for w in ws:
                wp.add_metric([str(w.worker), str(w.queue)], w.nfq.get("nfq_packets", 0))
            yield wp

            vd = CounterMetricFamily("lgwan_queue_verdicts", "Verdicts given to the kernel", labels=["verdict"])
            vd.add_metric(["accept"], _sum(v, "nfq", "nfq_accepted"))
            vd.add_metric(["drop"], _sum(v, "nfq", "nfq_dropped"))
            yield vd

            dd = CounterMetricFamily(
                "lgwan_daemon_drops", "Packets the daemon dropped on its own account", labels=["cause"]
            )
            for cause, key in (
                ("truncated", "truncated"),
                ("inspect_unavailable", "inspect_unavailable"),
                ("fragment", "fragment_dropped"),
                ("decide_error", "decide_errors"),
                ("startup", "startup_dropped"),
            ):
                dd.add_metric([cause], _sum(v, "nfq", key))
            yield dd

            for name, key, doc in (
                ("lgwan_gso_packets", "gso_packets", "Queued packets that were whole GSO/GRO super-packets"),
                (
                    "lgwan_kernel_timestamped_packets",
                    "kernel_timestamps",
                    "Queued packets decided with the kernel's receive timestamp (NFQA_TIMESTAMP), not the batch clock",
                ),
                ("lgwan_offload_marked_packets", "offload_marked", "Verdicts that carried the offload mark"),
                ("lgwan_socket_overruns", "enobufs", "ENOBUFS on the queue socket (kernel dropped packets for us)"),
                ("lgwan_verdict_errors", "verdict_errors", "Verdict messages the kernel did not take"),
            ):
                c = CounterMetricFamily(name, doc)
                c.add_metric([], _sum(v, "nfq", key))
                yield c

            g = GaugeMetricFamily("lgwan_max_packet_bytes", "Largest queued packet seen (GSO packets reach 64 KiB)")
            g.add_metric([], max((w.nfq.get("max_packet", 0) for w in ws), default=0))
            yield g

            g = GaugeMetricFamily("lgwan_flows", "Flows in the engines' flow tables")
            g.add_metric([], _sum(v, "engine", "flows"))
            yield g
            for name, key in (
                ("lgwan_flows_created", "flows_created"),
                ("lgwan_flows_expired", "flows_expired"),
                ("lgwan_flows_evicted", "flows_evicted"),
                ("lgwan_flows_redecided", "flows_redecided"),
            ):
                c = CounterMetricFamily(name, f"Engine counter {key}")
                c.add_metric([], _sum(v, "engine", key))
                yield c

            ev = CounterMetricFamily("lgwan_events", "Events written to the event log")
            ev.add_metric([], sum(w.events for w in ws))
            yield ev

            if v.offloaded_flows is not None:
                g = GaugeMetricFamily("lgwan_offloaded_flows", "Connections the kernel passes without the queue")
                g.add_metric([], _safe(v.offloaded_flows, 0))
                yield g
            if v.offloaded_packets is not None:
                pkts, nbytes = _safe(v.offloaded_packets, (0, 0))
                c = CounterMetricFamily("lgwan_offloaded_packets", "Packets of offloaded flows passed by the kernel")
                c.add_metric([], pkts)
                yield c
                c = CounterMetricFamily("lgwan_offloaded_bytes", "Bytes of offloaded flows passed by the kernel")
                c.add_metric([], nbytes)
                yield c

            if v.kernel_queues is not None:
                qs = _safe(v.kernel_queues, {})
                kd = CounterMetricFamily(
                    "lgwan_kernel_queue_dropped",
                    "Packets the kernel dropped at the queue (/proc/net/netfilter/nfnetlink_queue)",
                    labels=["queue", "cause"],
                )
                kw = GaugeMetricFamily("lgwan_kernel_queue_waiting", "Packets waiting for a verdict", labels=["queue"])
                for num, q in sorted(qs.items()):
                    kd.add_metric([str(num), "queue_full"], q.queue_dropped)
                    kd.add_metric([str(num), "socket_full"], q.user_dropped)
                    kw.add_metric([str(num)], q.waiting)
                yield kd
                yield kw

            rl = CounterMetricFamily("lgwan_reloads", "Policy reloads (SIGHUP)", labels=["result"])
            rl.add_metric(["ok"], v.reloads_ok)
            rl.add_metric(["failed"], v.reloads_failed)
            yield rl
            c = CounterMetricFamily("lgwan_rules_reinstalled", "Times the checker found the iptables rules altered")
            c.add_metric([], v.rules_reinstalled)
            yield c
            g = GaugeMetricFamily("lgwan_policy_generation", "Generation of the running policy")
            g.add_metric([], v.policy_generation)
            yield g
            g = GaugeMetricFamily(
                "lgwan_restart_pending", "1 when the config's restart-only settings differ from the running ones"
            )
            g.add_metric([], int(v.restart_pending))
            yield g
            g = GaugeMetricFamily("lgwan_workers", "Worker processes reporting")
            g.add_metric([], len(ws))
            yield g

            bounds = ws[0].latency_bounds if ws else []
            counts = [0] * (len(bounds) + 1)
            total_sum = 0.0
            for w in ws:
                for i, n in enumerate(w.latency_counts[: len(counts)]):
                    counts[i] += n
                total_sum += w.latency_sum
            cumulative: list[tuple[str, float]] = []
            acc = 0
            for i, b in enumerate([*bounds, math.inf]):
                acc += counts[i]
                cumulative.append(("+Inf" if b == math.inf else f"{b:.6g}", acc))
            h = HistogramMetricFamily("lgwan_decision_latency_seconds", "Time the engine took per queued packet")
            h.add_metric([], buckets=cumulative, sum_value=total_sum)
            yield h


def _safe(fn: Callable[[], Any], default: Any) -> Any:
    try:
        return fn()
    except Exception:  # a failing kernel read must not break the whole scrape
        return default


def serve(view: DaemonView, port: int, address: str = DEFAULT_ADDRESS) -> Callable[[], None]:
    """Serve /metrics in a daemon thread; returns a function that stops the server."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(view))
    server, thread = start_http_server(port, addr=address, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)

    return stop


# --- `lgwan-gateway stats` --------------------------------------------------------------------


def fetch(port: int = DEFAULT_PORT, address: str = DEFAULT_ADDRESS, timeout: float = 5.0) -> str:
    host = f"[{address}]" if ":" in address else address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as resp:
        text: str = resp.read().decode()
    return text


def render_table(text: str) -> str:
    """The lgwan_* metrics of a scrape as an aligned table (histograms as count / mean / p50 / p99)."""
    from prometheus_client.parser import text_string_to_metric_families

    rows: list[tuple[str, str, str]] = []
    for fam in text_string_to_metric_families(text):
        if not fam.name.startswith("lgwan_"):
            continue
        if fam.type == "histogram":
            buckets = [(s.labels["le"], s.value) for s in fam.samples if s.name.endswith("_bucket")]
            count = next((s.value for s in fam.samples if s.name.endswith("_count")), 0.0)
            total = next((s.value for s in fam.samples if s.name.endswith("_sum")), 0.0)
            mean = total / count if count else 0.0
            rows.append((fam.name, "count", f"{count:.0f}"))
            rows.append((fam.name, "mean", _fmt_seconds(mean)))
            for q in (0.5, 0.99):
                rows.append((fam.name, f"p{int(q * 100)} <=", _quantile(buckets, count, q)))
            continue
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            labels = ",".join(f"{k}={val}" for k, val in sorted(s.labels.items()))
            value = f"{s.value:.0f}" if float(s.value).is_integer() else f"{s.value:.6g}"
            rows.append((s.name, labels, value))
    if not rows:
        return "no lgwan_* metrics in the scrape\n"
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    lines = [f"{'metric':<{w0}}  {'labels':<{w1}}  {'value':>{w2}}"]
    lines.append("-" * len(lines[0]))
    lines.extend(f"{a:<{w0}}  {b:<{w1}}  {c:>{w2}}" for a, b, c in rows)
    return "\n".join(lines) + "\n"


def _fmt_seconds(s: float) -> str:
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def _quantile(buckets: list[tuple[str, float]], count: float, q: float) -> str:
    if not count:
        return "-"
    for le, acc in buckets:
        if acc >= q * count:
            return "+Inf" if le == "+Inf" else _fmt_seconds(float(le))
    return "+Inf"
