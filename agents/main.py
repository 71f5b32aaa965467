"""`callroute agent`: one center's agent process, wired from its parts.

    callroute agent --center ID --controlplane H:P[,H:P...] --http H:P [--grpc H:P]
                    [--acd simulated|push] [--state-dir DIR] [--config FILE] [--topology FILE]

Start order: settings -> topology -> last good plan from disk (so lookups are served before any
control plane answers) -> ACD -> lookup listeners -> plan watcher and reporter. On SIGTERM/SIGINT:
health turns NOT_SERVING (gRPC health and /healthz), lookups already received finish, listeners
close, then the process exits (F15). Must not: exit with a half-started agent (a failed listener
stops everything), or read the wall clock except for Report.sent_at.

Why over 600 lines: it is the agent's assembly, the one place that orders the start and the drain of
every part (ACD, reporter, plan watcher, listeners, probers) and the admin switches that reach into
them; the parts themselves are their own modules.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from agents.acd import ACD, ACD_ADAPTERS, make_acd
from agents.acdjournal import AcdJournal
from agents.counting import RoutedCounter, SeqStore
from agents.httpserver import HTTP_METRICS_HELP, AcdHttpServer, HttpLimits, HttpLookupServer, LookupEngine
from agents.plancache import PlanCache, PlanStore, PlanWatcher
from agents.probe import PathProber, PeerProber
from agents.reporter import Reporter
from agents.settings import AgentSettings, load_settings
from controlplane.core.model import InvalidInput, Topology
from wire.settings import is_loopback, parse_hostport
from wire.tls import agent_tls, check_cert_key_pair, read_pem

log = logging.getLogger("callroute.agent")

# A stdin line is one push message; longer is not a message (see pushacd.MAX_PUSH_BYTES).
MAX_STDIN_LINE = 1 << 20


# a simulated call notice to a peer agent is dropped after this long: on loopback it takes
# a millisecond; a stuck peer must not pile up tasks across report intervals
SIM_OFFER_TIMEOUT_S = 0.5


class AcdSecurity(msgspec.Struct, frozen=True):
    """The ACD listener's credentials: TLS context (None = plaintext), bearer token (b"" = none)."""

    ssl: Any = None
    token: bytes = b""
    insecure: bool = False


def acd_security(s: AgentSettings) -> AcdSecurity:
    """Check and load the ACD listener's credentials; refuse what would leave it open (B11).

    Off loopback: TLS and a token, or `insecure`. A token is never taken over plaintext off
    loopback, even with `insecure`: it would travel in the clear."""
    host, _ = parse_hostport("acd_listen", s.acd_listen)
    ctx = None
    if s.acd_tls_cert:
        import ssl

        check_cert_key_pair(read_pem("acd_tls_cert", s.acd_tls_cert), read_pem("acd_tls_key", s.acd_tls_key),
                    s.acd_tls_cert)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(s.acd_tls_cert, s.acd_tls_key)
    token = b""
    if s.acd_token_file:
        token = read_pem("acd_token_file", s.acd_token_file).strip()
        if not token or not all(0x21 <= b < 0x7F for b in token):
            raise InvalidInput("acd_token_file", s.acd_token_file,
                               "must hold one token of printable ASCII without spaces")
    if is_loopback(host):
        return AcdSecurity(ctx, token)
    if token and ctx is None:
        raise InvalidInput("acd_token_file", s.acd_token_file, f"a bearer token over plaintext on "
                           f"{s.acd_listen} would travel in the clear: set acd_tls_cert/acd_tls_key")
    if ctx is not None and token:
        return AcdSecurity(ctx, token)
    if not s.insecure:
        raise InvalidInput("acd_listen", s.acd_listen, "not loopback: needs acd_tls_cert, acd_tls_key "
                           "and acd_token_file, or --insecure")
    log.warning("INSECURE: the ACD listener on %s takes pushes and fault switches without %s",
                s.acd_listen, "a token" if ctx is not None else "TLS or a token")
    return AcdSecurity(ctx, token, insecure=True)


class Agent:
    """The running agent: its parts, their start and their drain."""

    def __init__(self, settings: AgentSettings, topology: Topology | None = None) -> None:
        self.s = settings
        self.topology = topology
        self.started = time.monotonic()
        known = frozenset(topology.center_ids()) if topology is not None else None
        if known is not None and settings.center not in known:
            raise InvalidInput("center", settings.center, "not a center of the topology")
        store = PlanStore(settings.state_dir) if settings.state_dir else None
        self.cache = PlanCache(topology, store, confirm_by_stream=False)
        self.counter = RoutedCounter()
        self.engine = LookupEngine(self.cache, self.counter)
        now = time.monotonic()
        self.acd: ACD = make_acd(settings, topology, now)
        self.engine.acd_live = self.acd.live  # look-ahead offers are answered on the ACD's gauges
        carry = getattr(self.acd, "carry", None)
        if carry is not None and settings.state_dir:  # pushed messages survive a crash (acdjournal.py)
            if n := carry.use_journal(AcdJournal(Path(settings.state_dir) / "acd-held.jsonl")):
                log.info("re-sending %d ACD messages held at the last stop", n)
        offset = settings.wall_offset_s

        def wall() -> float:
            return time.time() + offset

        node = settings.node or f"{settings.center}-{os.getpid()}"
        self.reporter = Reporter(
            settings.center, self.acd, self.counter, SeqStore(settings.state_dir or None,
                                                              settings.seq_block),
            settings.controlplane, interval_s=settings.report_interval_s, wall=wall,
            keepalive_time_s=settings.keepalive_time_s, keepalive_timeout_s=settings.keepalive_timeout_s,
            deadline_s=settings.rpc_deadline_s, backoff_initial_s=settings.backoff_initial_s,
            backoff_max_s=settings.backoff_max_s, stream_max_age_s=settings.stream_max_age_s,
            known_centers=known,
            known_branches=frozenset(b.id for b in topology.branches) if topology is not None else None,
            known_skills=frozenset(topology.skills()) if topology is not None else None,
            on_plan_version=self.cache.confirm, tls=agent_tls(settings), via=settings.controlplane_via)
        self._offers: set[asyncio.Task[None]] = set()
        self.cache.on_topology.append(self._use_topology)
        self.prober: PeerProber | None = None
        self.path_prober: PathProber | None = None
        self.offer_errors = 0
        if settings.sim_peers and self.acd.on_admin is not None:  # simulated ACDs take peers' offers
            self.reporter.deliver = self._deliver
        self.watcher = PlanWatcher(
            self.cache, settings.controlplane, settings.center, node,
            keepalive_time_s=settings.keepalive_time_s, keepalive_timeout_s=settings.keepalive_timeout_s,
            connect_deadline_s=settings.rpc_deadline_s, backoff_initial_s=settings.backoff_initial_s,
            backoff_max_s=settings.backoff_max_s, tls=agent_tls(settings))
        limits = HttpLimits(
            header_timeout_s=settings.http_header_timeout_s, body_timeout_s=settings.http_body_timeout_s,
            idle_timeout_s=settings.http_idle_timeout_s, write_timeout_s=settings.http_write_timeout_s,
            max_connections=settings.http_max_connections,
            max_header_bytes=settings.http_max_header_bytes, max_pipeline=settings.http_max_pipeline)
        self.http = HttpLookupServer(
            self.engine, health=self.health, metrics=self.metrics_text,
            sample_every=settings.latency_sample_every, max_batch=settings.max_batch, limits=limits)
        self.acd_security = acd_security(settings)
        if settings.peers:
            # issue 16: the control plane asks this agent to probe centers it cannot hear; the
            # peers' ACD listeners take our ACD token, sent only over loopback plaintext as for
            # simulated calls
            peers = {c: parse_hostport(f"peers.{c}", a) for c, a in settings.peers.items()
                     if c != settings.center}
            ssl_ctx = peer_tls(settings, peers)
            # the token goes to peers over TLS, or over loopback plaintext as for simulated calls
            token = self.acd_security.token if ssl_ctx is not None or all(
                is_loopback(h) for h, _ in peers.values()) else b""
            self.prober = PeerProber(peers, settings.probe_timeout_s, token, self.reporter.report_now,
                                     ssl_ctx=ssl_ctx)
            self.reporter.prober = self.prober
            if settings.path_probe_interval_s > 0:
                self.path_prober = PathProber(peers, settings.path_probe_interval_s,
                                              settings.probe_timeout_s, token, self.reporter.report_now,
                                              ssl_ctx=ssl_ctx)
                self.reporter.paths = self.path_prober
        self.acd_http = AcdHttpServer(
            push=self._push if self.acd.on_push is not None else None,
            admin=self._admin if self.acd.on_admin is not None else None,
            token=self.acd_security.token, limits=limits, center=settings.center,
            entry_ok=self._entry_ok)
        self.acd_port = 0
        self.grpc: Any = None
        self.http_port = 0
        self.grpc_port = 0
        self.draining = False
        self._stop = asyncio.Event()

    # ------------------------------------------------------------ outside input

    def _push(self, body: bytes) -> None:
        assert self.acd.on_push is not None
        self.acd.on_push(body, time.monotonic())

    def _entry_ok(self) -> bool:
        return self.acd.entry_ok()

    def _admin(self, body: bytes) -> dict[str, Any]:
        assert self.acd.on_admin is not None
        return self.acd.on_admin(body, time.monotonic())

    def _deliver(self, others: dict[str, dict[str, int]]) -> None:
        """Simulation: tell the receiving centers' agents about the calls routed to them."""
        loop = asyncio.get_running_loop()
        for target, per_skill in others.items():
            addr = self.s.sim_peers.get(target)
            if addr:
                task = loop.create_task(self._post_offer(addr, per_skill))
                self._offers.add(task)
                task.add_done_callback(self._offers.discard)

    def _use_topology(self, topology: Topology) -> None:
        """A plan brought a live topology (issue 18): reports may name its centers, branches and
        skills from now on (the simulated ACD keeps its start-up staffing)."""
        self.topology = topology
        self.reporter.known_centers = frozenset(topology.center_ids())
        self.reporter.known_branches = frozenset(b.id for b in topology.branches)
        self.reporter.known_skills = frozenset(topology.skills())
        self.acd.use_topology(topology)

    async def _post_offer(self, addr: str, per_skill: dict[str, int]) -> None:
        host, _, port = addr.rpartition(":")
        body = msgspec.json.encode({"offer": per_skill})
        # peers are the other agents' ACD listeners; the token goes only over loopback plaintext
        auth = (b"Authorization: Bearer " + self.acd_security.token + b"\r\n"
                if self.acd_security.token and is_loopback(host) else b"")
        writer = None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)),
                                                    SIM_OFFER_TIMEOUT_S)
            writer.write(b"POST /v1/admin/acd HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n%s"
                         b"Connection: close\r\n\r\n%s" % (host.encode(), len(body), auth, body))
            await asyncio.wait_for(reader.read(), SIM_OFFER_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError):
            self.offer_errors += 1  # a dead peer is a lost simulated call, as on a real trunk
        finally:
            if writer is not None:
                writer.close()

    async def _stdin_pushes(self) -> None:
        """JSON lines on stdin, one push each; a bad line is logged and counted, never fatal.

        Read on a daemon thread: stdin may be a pipe, a file, a tty or /dev/null, and uvloop's
        pipe transport aborts the process on some of those; a daemon thread also never holds up
        shutdown while blocked in read."""
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[bytes] = asyncio.Queue()

        def reader() -> None:
            stream = sys.stdin.buffer if sys.stdin is not None else None
            while stream is not None:
                try:
                    line = stream.readline(MAX_STDIN_LINE + 1)
                except (OSError, ValueError):
                    line = b""
                loop.call_soon_threadsafe(lines.put_nowait, line)
                if not line:
                    return

        threading.Thread(target=reader, name="stdin-push", daemon=True).start()
        while True:
            line = await lines.get()
            if not line:
                return
            if len(line) > MAX_STDIN_LINE:
                log.warning("push on stdin rejected: line longer than %d bytes", MAX_STDIN_LINE)
                continue
            if not line.strip():
                continue
            try:
                self._push(line)
            except InvalidInput as e:
                log.warning("push on stdin rejected: %s", e)

    # ------------------------------------------------------------ health and metrics

    def health(self) -> dict[str, Any]:
        return {"center": self.s.center, "plan_version": self.cache.version,
                "plan_age_s": round(self.cache.age(), 3), "restored": self.cache.restored,
                "report_stream": self.reporter.state, "plan_stream": self.watcher.connected,
                "controlplane": self.reporter.endpoint}

    def metrics_text(self) -> bytes:
        st = self.engine.stats
        c = self.s.center
        lines = [
            "# HELP callroute_agent_lookups_total Route lookups answered, by result.",
            "# TYPE callroute_agent_lookups_total counter",
        ]
        for result, n in (("ok", st.ok), ("bad_request", st.bad), ("no_plan", st.no_plan),
                          ("error", st.errors)):
            lines.append(f'callroute_agent_lookups_total{{center="{c}",result="{result}"}} {n}')
        lines += ["# HELP callroute_agent_requeries_total Re-queries answered (issue 17), by answer.",
                  "# TYPE callroute_agent_requeries_total counter",
                  f'callroute_agent_requeries_total{{center="{c}",answer="move"}} {st.requery_moved}',
                  f'callroute_agent_requeries_total{{center="{c}",answer="stay"}} {st.requery_stayed}',
                  "# HELP callroute_agent_lookahead_total Look-ahead offers of waiting calls to this center,"
                  " by answer.",
                  '# TYPE callroute_agent_lookahead_total counter',
                  f'callroute_agent_lookahead_total{{center="{c}",answer="accept"}} {st.lookahead_accepted}',
                  f'callroute_agent_lookahead_total{{center="{c}",answer="refuse"}} {st.lookahead_refused}']
        lines += ["# HELP callroute_agent_lookup_latency_seconds Server-side lookup time (sampled).",
                  "# TYPE callroute_agent_lookup_latency_seconds histogram"]
        from agents.httpserver import LATENCY_BUCKETS

        acc = 0
        for le, n in zip((*LATENCY_BUCKETS, "+Inf"), st.hist, strict=True):
            acc += n
            lines.append(f'callroute_agent_lookup_latency_seconds_bucket{{le="{le}"}} {acc}')
        lines.append(f"callroute_agent_lookup_latency_seconds_sum {st.hist_sum:.9f}")
        lines.append(f"callroute_agent_lookup_latency_seconds_count {st.hist_n}")
        r = self.reporter
        states = ("connecting", "connected", "backoff", "stopped")
        lines += [
            "# HELP callroute_agent_plan_version Version of the plan being served (0 = none).",
            "# TYPE callroute_agent_plan_version gauge",
            f"callroute_agent_plan_version {self.cache.version}",
            "# HELP callroute_agent_plan_age_seconds Time since the served plan was last known current.",
            "# TYPE callroute_agent_plan_age_seconds gauge",
            f"callroute_agent_plan_age_seconds {self.cache.age():.3f}",
            "# HELP callroute_agent_plans_total Pushed plans, by outcome.",
            "# TYPE callroute_agent_plans_total counter",
            f'callroute_agent_plans_total{{outcome="accepted"}} {self.cache.accepted}',
            f'callroute_agent_plans_total{{outcome="rejected"}} {self.cache.rejected}',
            "# HELP callroute_agent_report_stream_state Report stream state (1 = current).",
            "# TYPE callroute_agent_report_stream_state gauge",
            *(f'callroute_agent_report_stream_state{{state="{s}"}} {int(r.state == s)}' for s in states),
            "# HELP callroute_agent_reports_total Reports, by outcome.",
            "# TYPE callroute_agent_reports_total counter",
            f'callroute_agent_reports_total{{outcome="sent"}} {r.sent}',
            f'callroute_agent_reports_total{{outcome="accepted"}} {r.acked}',
            f'callroute_agent_reports_total{{outcome="rejected"}} {r.rejected}',
            f'callroute_agent_reports_total{{outcome="dropped"}} {r.dropped}',
            "# HELP callroute_agent_demand_lookups_total Per-branch lookup counts off the normal path "
            "(rejected with a report, discarded as unknown to the topology, re-sent after a lost ack).",
            "# TYPE callroute_agent_demand_lookups_total counter",
            f'callroute_agent_demand_lookups_total{{outcome="rejected"}} {r.ledger.rejected}',
            f'callroute_agent_demand_lookups_total{{outcome="discarded"}} {r.demand_discarded}',
            f'callroute_agent_demand_lookups_total{{outcome="recovered"}} {r.ledger.recovered}',
            "# HELP callroute_agent_demand_outstanding_lookups Lookups not yet acknowledged by the "
            "control plane (pending, in flight or in doubt).",
            "# TYPE callroute_agent_demand_outstanding_lookups gauge",
            f"callroute_agent_demand_outstanding_lookups "
            f"{r.ledger.outstanding() + sum(self.counter.counts.values())}",
            "# HELP callroute_agent_acd_outcomes_outstanding_calls The ACD's answered/abandoned calls "
            "not yet acknowledged by the control plane's billing ledger.",
            "# TYPE callroute_agent_acd_outcomes_outstanding_calls gauge",
            f"callroute_agent_acd_outcomes_outstanding_calls {r.outcomes.outstanding()}",
            *self._acd_metric_lines(),
            "# HELP callroute_agent_stream_reconnects_total Report and plan stream reconnects.",
            "# TYPE callroute_agent_stream_reconnects_total counter",
            f'callroute_agent_stream_reconnects_total{{stream="report"}} {r.reconnects}',
            f'callroute_agent_stream_reconnects_total{{stream="plan"}} {self.watcher.reconnects}',
            "# HELP callroute_agent_draining 1 while the agent drains before stopping.",
            "# TYPE callroute_agent_draining gauge",
            f"callroute_agent_draining {int(self.draining)}",
            "# HELP callroute_agent_insecure 1 when a listener runs off loopback without TLS and "
            "authentication (--insecure).",
            "# TYPE callroute_agent_insecure gauge",
            f'callroute_agent_insecure{{listener="acd"}} {int(self.acd_security.insecure)}',
            *HTTP_METRICS_HELP, *self.http.metrics_lines(), *self.acd_http.metrics_lines(),
        ]
        return ("\n".join(lines) + "\n").encode()

    def _acd_metric_lines(self) -> list[str]:
        return self.acd.metric_lines()

    # ------------------------------------------------------------ running

    def request_stop(self) -> None:
        self._stop.set()

    async def start(self) -> None:
        """Restore, listen; raises (and closes what it opened) if any listener fails."""
        self.cache.restore()
        host, port = parse_hostport("http", self.s.http)
        self.http_port = await self.http.start(host, port)
        ahost, aport = parse_hostport("acd_listen", self.s.acd_listen)
        try:
            self.acd_port = await self.acd_http.start(ahost, aport, self.acd_security.ssl)
        except Exception:
            await self.http.stop(0)
            raise
        if self.s.grpc:
            from agents.grpcserver import GrpcLookupServer

            self.grpc = GrpcLookupServer(self.engine)
            ghost, gport = parse_hostport("grpc", self.s.grpc)
            try:
                self.grpc_port = await self.grpc.start(ghost, gport)
            except Exception:
                await asyncio.gather(self.http.stop(0), self.acd_http.stop(0))
                raise

    async def run(self) -> None:
        await self.start()
        # everything allocated so far (modules, the plan, its tables) lives as long as the
        # process: keep it out of the collector's scans, which would otherwise stall lookups
        gc.collect()
        gc.freeze()
        log.info("agent %s: http on %s, acd on %s, grpc on %s, plan v%s", self.s.center, self.http_port,
                 self.acd_port, self.grpc_port or "-", self.cache.version)
        # one line on stdout for supervisors and tests: the ports actually bound
        print(msgspec.json.encode({"event": "listening", "http": self.http_port, "acd": self.acd_port,
                                   "grpc": self.grpc_port,
                                   "plan_version": self.cache.version}).decode(), flush=True)
        tasks = [asyncio.create_task(self.reporter.run(), name="reporter"),
                 asyncio.create_task(self.watcher.run(), name="plan-watcher")]
        if self.acd.on_push is not None:
            tasks.append(asyncio.create_task(self._stdin_pushes(), name="stdin-push"))
        if self.path_prober is not None:
            tasks.append(asyncio.create_task(self.path_prober.run(), name="path-prober"))
        stop = asyncio.create_task(self._stop.wait())
        try:
            pending = {*tasks, stop}
            while stop in pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    if t is stop or t.get_name() == "stdin-push":
                        continue  # stdin closing is normal: pushes over HTTP still work
                    # a part that ends or dies takes the agent down: no half-working agent
                    if t.cancelled():
                        raise RuntimeError(f"{t.get_name()} was cancelled")
                    if t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
                    raise RuntimeError(f"{t.get_name()} ended")
        finally:
            await self.drain()
            if not tasks[0].done():
                # no lookups any more: their counts reach the control plane before we go (billing)
                await self.reporter.settle(self.s.drain_grace_s)
            self.reporter.stop()
            self.watcher.stop()
            offers = list(self._offers)
            if self.prober is not None:
                self.prober.close()
            for t in (*tasks, stop, *offers):
                t.cancel()
            await asyncio.gather(*tasks, stop, *offers, return_exceptions=True)

    async def drain(self) -> None:
        """F15: NOT_SERVING first, then let lookups in flight finish, then close."""
        if self.draining:
            return
        self.draining = True
        self.http.start_drain()
        if self.grpc is not None:
            await self.grpc.start_drain()
        log.info("draining: health NOT_SERVING for %.1f s before closing", self.s.drain_notice_s)
        await asyncio.sleep(self.s.drain_notice_s)
        grace = self.s.drain_grace_s
        await asyncio.gather(self.http.stop(grace), self.acd_http.stop(grace),
                             *([self.grpc.stop(grace)] if self.grpc is not None else []))


def raise_fd_limit(need: int) -> None:
    """Raise the soft open-files limit towards `need` (never past the hard one): past the soft limit
    accept() fails with EMFILE before the connection limit can close anything at once."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE,
                           (need if hard == resource.RLIM_INFINITY else min(need, hard), hard))


def peer_tls(s: AgentSettings, peers: dict[str, tuple[str, int]]) -> Any:
    """The TLS context for probing peers' ACD listeners: None on loopback (plaintext, as there);
    off loopback their listeners speak TLS with certificates of the callroute CA (`tls_ca`), and a
    probe that could not tell a peer from an impostor would be worse than none (B5)."""
    if all(is_loopback(h) for h, _ in peers.values()):
        return None
    if not s.tls_ca:
        if s.insecure:
            return None  # --insecure: the peers' listeners are plaintext too
        raise InvalidInput("peers", ", ".join(sorted(peers)),
                           "peers off loopback are probed over TLS: set tls_ca (the callroute CA), "
                           "or --insecure")
    import ssl

    ctx = ssl.create_default_context(cafile=s.tls_ca)
    # the chain is checked (only the callroute CA's certificates pass); names are centers' SPIFFE
    # URIs, not DNS names, so the host name is not
    ctx.check_hostname = False
    return ctx


def _peers_from_args(values: list[str] | None) -> dict[str, str] | None:
    if not values:
        return None
    peers: dict[str, str] = {}
    for v in values:
        center, sep, addr = v.partition("=")
        if not sep or not center or not addr:
            raise InvalidInput("--peer", v, "must be CENTER=HOST:PORT")
        peers[center] = addr
    return peers


def settings_from_args(args: argparse.Namespace) -> AgentSettings:
    return load_settings(
        args.config, center=args.center, controlplane=args.controlplane, http=args.http,
        grpc=args.grpc, acd=args.acd, state_dir=args.state_dir, topology=args.topology,
        node=getattr(args, "node", None),
        insecure=True if getattr(args, "insecure", False) else None,
        peers=_peers_from_args(getattr(args, "peer", None)),
        **{k: getattr(args, k, None) for k in ("tls_ca", "tls_cert", "tls_key", "tls_server_name",
                                               "acd_listen", "acd_tls_cert", "acd_tls_key",
                                               "acd_token_file")})


async def _amain(settings: AgentSettings) -> int:
    topology = None
    if settings.topology:
        from controlplane.core.topology import load_topology

        topology = load_topology(settings.topology)
    agent = Agent(settings, topology)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.request_stop)
    await agent.run()
    # Drained and reported: what is left is closing the loop and the interpreter. Closing the loop
    # would put back the default action, and a second SIGTERM then (a supervisor repeating its
    # notice) would kill us with -15 after a clean drain; ignore both from here on.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)
    return 0


def run_agent(args: argparse.Namespace) -> int:
    """Entry point for `callroute agent` (see add_agent_parser)."""
    from wire.textsafe import configure_logging

    # reasons, NACK errors and peers' names reach the log as text, never as control sequences
    configure_logging(os.environ.get("CALLROUTE_LOG", "INFO"),
                      "%(asctime)s %(levelname)s %(name)s: %(message)s", sys.stderr)
    try:
        settings = settings_from_args(args)
    except InvalidInput as e:
        print(f"callroute agent: error: {e}", file=sys.stderr)
        return 2
    import uvloop

    # both listeners may hold http_max_connections each; 256 for the rest (gRPC, files, stdin)
    raise_fd_limit(2 * settings.http_max_connections + 256)
    try:
        return uvloop.run(_amain(settings))
    except InvalidInput as e:
        print(f"callroute agent: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"callroute agent: error: {e}", file=sys.stderr)
        return 1


def add_agent_parser(sub: Any) -> argparse.ArgumentParser:
    """Adds `agent` to the `callroute` subcommands (controlplane/cli/services.py adds it)."""
    sp = sub.add_parser("agent", help="run a center's agent: reports, plan cache, route lookups")
    sp.add_argument("--center", required=True, help="center id (as in the topology)")
    sp.add_argument("--controlplane", help="control-plane endpoints HOST:PORT[,HOST:PORT...]")
    sp.add_argument("--http", help="switch-facing HTTP listener HOST:PORT (port 0 = any free)")
    sp.add_argument("--grpc", help="gRPC Route/RouteBatch listener HOST:PORT")
    sp.add_argument("--acd", choices=sorted(ACD_ADAPTERS), help="where load figures come from")
    sp.add_argument("--state-dir", help="last good plan and report sequence survive restarts here")
    sp.add_argument("--config", help="settings file (YAML or JSON); flags override it")
    sp.add_argument("--topology", help="topology YAML: plan checks and the simulated ACD's staffing")
    sp.add_argument("--node", help="this agent instance's name (default CENTER-PID)")
    sec = sp.add_argument_group("mTLS to the control plane (each also a settings-file key)")
    sec.add_argument("--tls-ca", help="CA of the control plane's certificate")
    sec.add_argument("--tls-cert", help="this center's client certificate: its identity")
    sec.add_argument("--tls-key", help="its private key")
    sec.add_argument("--tls-server-name", help="name expected in the control plane's certificate")
    acd = sp.add_argument_group("the ACD listener: push ACD and simulated-ACD fault switches "
                                "(each also a settings-file key)")
    acd.add_argument("--acd-listen", help="HOST:PORT (default 127.0.0.1:0, loopback, any free port)")
    acd.add_argument("--acd-tls-cert", help="its TLS certificate (required off loopback)")
    acd.add_argument("--acd-tls-key", help="its private key")
    acd.add_argument("--acd-token-file", help="file with the bearer token the ACD must send")
    acd.add_argument("--peer", action="append", metavar="CENTER=HOST:PORT",
                     help="another center's agent's ACD listener, for probes (issue 16); repeat per center")
    acd.add_argument("--insecure", action="store_true",
                     help="allow a non-loopback ACD listener without TLS and token (logged, metric)")
    sp.set_defaults(func=run_agent)
    return sp


def main(argv: list[str] | None = None) -> int:
    """`python -m agents.main [agent] --center ...`: the same as `callroute agent ...`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["agent"]:
        argv.insert(0, "agent")
    p = argparse.ArgumentParser(prog="callroute")
    sub = p.add_subparsers(dest="command", required=True)
    add_agent_parser(sub)
    args = p.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
