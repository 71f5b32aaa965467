"""The control plane's Prometheus metrics, in a registry of their own, and the /metrics listener.

One `ControlPlaneMetrics` per replica (tests run several in one process, so nothing goes into the
global registry). Must not: decide anything; it only counts what the shells tell it.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from controlplane.core.model import Status

_P = "callroute_controlplane_"
# plan computation of a national network takes milliseconds; a second is a bug
_COMPUTE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# publish = fenced etcd txn(s): ~1 ms on loopback, tens of ms on a loaded cluster, seconds = trouble
_PUBLISH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# acked-version series kept: one per version an agent runs; old versions are removed when no agent
# reports them, so this bounds the label set if something goes wrong
MAX_ACK_VERSIONS = 64


class ControlPlaneMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.reports = Counter(
            _P + "reports_total", "Center reports received, by result", ["result"], registry=r
        )
        self.report_rejects = Counter(
            _P + "report_rejects_total", "Reports rejected, by reason", ["reason"], registry=r
        )
        self.readiness_infeasible = Gauge(
            _P + "readiness_infeasible_cases",
            "Forecast half hours ahead whose loss of this center would leave an infeasible DR plan",
            ["center", "at"], registry=r,
        )
        self.center_health = Gauge(
            _P + "center_health", "1 for the center's current status", ["center", "status"], registry=r
        )
        self.plan_version = Gauge(_P + "plan_version", "Latest plan version this replica holds", registry=r)
        self.plan_age = Gauge(
            _P + "plan_age_seconds",
            "Seconds since this replica last saw a new plan or a leader heartbeat",
            registry=r,
        )
        self.plan_stale = Gauge(
            _P + "plan_stale", "1 when plan age exceeds plan_stale_after_s (alert)", registry=r
        )
        self.insecure_mode = Gauge(
            _P + "insecure_mode",
            "1 when a listener or the store runs off loopback without TLS and authentication (--insecure)",
            registry=r,
        )
        self.plan_compute = Histogram(
            _P + "plan_compute_seconds", "Time to compute one plan", buckets=_COMPUTE_BUCKETS, registry=r
        )
        self.publish_latency = Histogram(
            _P + "publish_latency_seconds",
            "Time to store one plan (fenced, chunked)",
            buckets=_PUBLISH_BUCKETS,
            registry=r,
        )
        self.route_weight = Gauge(
            _P + "route_weight",
            "Share of a branch/skill's calls per center",
            ["branch", "skill", "center"],
            registry=r,
        )
        self.calls_routed = Counter(
            _P + "calls_routed_total",
            "Calls routed per origin and receiving center (from reports)",
            ["branch", "center"],
            registry=r,
        )
        # per branch, not per reporting center: what hosted branches are billed by (domain.md,
        # internal pricing); label values are the topology's branches and skills (reports naming
        # others are rejected), so the series are bounded by the topology
        self.branch_lookups = Counter(
            _P + "branch_lookups_total",
            "Lookups agents answered per branch and skill (from reports' demand; leader only)",
            ["branch", "skill"],
            registry=r,
        )
        self.branch_demand = Gauge(
            _P + "branch_demand_calls_per_hour",
            "Live demand estimate the planner uses per branch and skill (the forecast while no "
            "center reports; leader only)",
            ["branch", "skill"],
            registry=r,
        )
        # issue 15 item 5: one center's report must not move another's traffic; label values are the
        # topology's centers (the report stream's authenticated center)
        self.acd_offered = Counter(
            _P + "acd_offered_total",
            "Calls a center's ACD offered, as counted by the leader: each ACD message once, "
            "whichever agent replica reported it (issue 15); compare with the ACD's own count",
            ["center"],
            registry=r,
        )
        self.foreign_demand_excess = Counter(
            _P + "foreign_demand_excess_lookups_total",
            "Lookups a center reported for branches it does not host beyond its allowance "
            "(foreign_demand_factor), not planned on",
            ["center"],
            registry=r,
        )
        # bound children of branch_lookups: labels() takes a lock and builds a key, per report entry
        self._branch_lookups: dict[tuple[str, str], Any] = {}
        self.agents_acked = Gauge(
            _P + "agents_acked", "Agent streams whose last ACK is this version", ["version"], registry=r
        )
        self.nacks = Counter(_P + "plan_nacks_total", "Plan pushes refused by agents", ["center"], registry=r)
        self.leader = Gauge(_P + "leader", "1 while this replica is the leader", registry=r)
        self.leader_changes = Counter(
            _P + "leader_changes_total",
            "Times this replica became or stopped being leader",
            ["event"],
            registry=r,
        )
        self.store_errors = Counter(
            _P + "store_errors_total", "Store calls that failed, by op", ["op"], registry=r
        )
        self.watch_streams = Gauge(_P + "watch_streams", "Open WatchPlan streams", registry=r)
        self.retention_deleted = Counter(
            _P + "retention_deleted_total", "Stored records deleted by retention (age or count), by kind",
            ["kind"], registry=r
        )
        self.report_streams = Gauge(_P + "report_streams", "Open Report streams", registry=r)
        # issue 16: indirect probes of silent centers, cut links, and the panic freeze
        self.probe_requests = Counter(
            _P + "probe_requests_total", "Probes of silent centers asked of their peers' agents", registry=r)
        self.panic = Gauge(
            _P + "panic", "1 while more than the panic share of centers is silent: plan frozen", registry=r)
        self.link_cut = Gauge(
            _P + "center_link_cut", "1 while the leader cannot hear the center but its peers reach it",
            ["center"], registry=r)
        self.path_broken = Gauge(
            _P + "path_broken", "1 while the sender's probes find its path to the receiver broken (F21)",
            ["sender", "receiver"], registry=r)
        self.publishes = Counter(_P + "publishes_total", "Plans published, by cause", ["cause"], registry=r)
        self._route_labels: set[tuple[str, str, str]] = set()
        self._health_labels: dict[str, str] = {}

    def set_health(self, center: str, status: Status) -> None:
        old = self._health_labels.get(center)
        if old == status.value:
            return
        if old is not None:
            self.center_health.labels(center, old).set(0)
        self.center_health.labels(center, status.value).set(1)
        self._health_labels[center] = status.value

    def set_route_weights(self, routes: Any) -> None:
        """Replace the route-weight series with this plan's (series of vanished targets removed)."""
        seen: set[tuple[str, str, str]] = set()
        for r in routes:
            for t in r.targets:
                key = (r.branch, r.skill, t.center)
                seen.add(key)
                self.route_weight.labels(*key).set(t.weight)
        for key in self._route_labels - seen:
            self.route_weight.remove(*key)
        self._route_labels = seen

    def count_lookups(self, demand: dict[str, dict[str, int]]) -> None:
        """One accepted report's per-branch lookup counts."""
        children = self._branch_lookups
        for branch, per_skill in demand.items():
            for skill, n in per_skill.items():
                if n:
                    child = children.get((branch, skill))
                    if child is None:
                        child = children[(branch, skill)] = self.branch_lookups.labels(branch, skill)
                    child.inc(n)

    def set_demand(self, rates: dict[str, dict[str, float]]) -> None:
        """The leader's demand estimate (calls per hour); {} when not leading clears the series."""
        if not rates:
            self.branch_demand.clear()
            return
        for branch, per_skill in rates.items():
            for skill, v in per_skill.items():
                self.branch_demand.labels(branch, skill).set(v)

    def set_acked(self, counts: dict[int, int]) -> None:
        self.agents_acked.clear()
        for v, n in sorted(counts.items())[-MAX_ACK_VERSIONS:]:
            self.agents_acked.labels(str(v)).set(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)


# a scrape request line and headers fit in a few KiB; more is not Prometheus
MAX_REQUEST_BYTES = 16 * 1024
# a scraper that does not finish its request within this is dropped (no stuck connections)
REQUEST_TIMEOUT_S = 5.0


async def serve_metrics(metrics: ControlPlaneMetrics, host: str, port: int) -> Any:
    """A minimal HTTP/1.1 listener for GET /metrics on the event loop (no thread, no global state)."""
    import asyncio

    from prometheus_client import CONTENT_TYPE_LATEST

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "GET" and parts[1].split("?")[0] == "/metrics":
                body, status, ctype = metrics.render(), "200 OK", CONTENT_TYPE_LATEST
            else:
                body, status, ctype = b"not found\n", "404 Not Found", "text/plain"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=MAX_REQUEST_BYTES)
