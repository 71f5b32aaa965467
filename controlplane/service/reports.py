"""ReportService: one stream per center, validated at the boundary, fed to the leader's brain.

Only the leader accepts report streams; any other replica ends the stream at once with
FAILED_PRECONDITION "not leader; leader at HOST:PORT" so the agent moves on. Every report gets a
ReportAck: a bad one (B2) or a stale one (F12) is answered accepted=false with the field and value,
never dropped in silence, and nothing of it reaches the core. An accepted report's per-branch
lookup counts (`demand`) go to the leader term's DemandTracker (the planner's live demand) and to
the per-branch lookup counter; its ack carries the center's previous accepted seq, so an agent whose
stream broke can tell which unacknowledged reports were counted (each lookup counted once). Must
not: block the event loop, keep per-stream state beyond the center id and whether its agent counts
demand, or accept reports after this replica stops leading.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc

from callroute.v1 import report_pb2_grpc
from controlplane.core.health import StaleReport
from controlplane.core.model import InvalidInput
from controlplane.service.ledger import RetiredIncarnation
from wire.convert import report_ack, report_from_pb

log = logging.getLogger("callroute.controlplane.reports")


class ReportServicer(report_pb2_grpc.ReportServiceServicer):
    def __init__(self, cp: Any) -> None:
        self.cp = cp

    async def _not_leader(self, context: grpc.aio.ServicerContext) -> None:
        where = self.cp.leader_address or "unknown"
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"not leader; leader at {where}")

    async def Report(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        cp = self.cp
        leader = cp.leader
        if leader.brain is None:
            await self._not_leader(context)
        metrics = cp.metrics
        # bound once per stream: labels() is a dict lookup under a lock, per report it adds up
        accepted = metrics.reports.labels("accepted")
        rejected = metrics.reports.labels("rejected")
        loop = cp.loop
        center = ""
        brain = leader.brain
        ledger = leader.ledger  # set with the brain each term: billing counts, fenced (ledger.py)
        # whether this stream's agent counts lookups: once it has sent demand, its reports without
        # any say "no lookups this interval" (zero is data); an older agent's never do, and feeding
        # them would read its branches' calls as zero instead of leaving the forecast
        counting = False
        metrics.report_streams.inc()
        try:
            async for msg in request_iterator:
                if leader.brain is not brain:  # demoted (or re-elected: a new term starts clean)
                    await self._not_leader(context)
                version = cp.feed.version
                try:
                    # demand may name only the topology's branches and skills (B2): a typo'd id is
                    # refused with its field; read per report, a live topology replaces them
                    report = report_from_pb(msg, cp.known_centers, known_branches=cp.known_branches,
                                            known_skills=cp.known_skills)
                    if center and report.center != center:
                        raise InvalidInput(
                            "center",
                            report.center,
                            f"this stream reports for {center!r}; one center per stream",
                        )
                except InvalidInput as e:
                    rejected.inc()
                    metrics.report_rejects.labels("invalid").inc()
                    yield report_ack(msg.seq, version, e)
                    continue
                now = loop.time()
                if not center:
                    center = report.center
                    brain.stream_opened(center, now)
                    leader.wake()
                offered_before = brain.tracker.calls_seen(center)[1]
                try:
                    out = brain.on_report(report, now, count_demand=counting or bool(report.demand))
                except StaleReport as e:
                    rejected.inc()
                    metrics.report_rejects.labels("stale").inc()
                    yield report_ack(msg.seq, version, InvalidInput(e.field, e.value, f"stale: {e}"))
                    continue
                prior_seq = out.prior_seq
                if ledger is not None and (report.calls or report.outcomes or not report.demand):
                    # the billing ledger's durable mark, not the term's tracker: an agent re-sends
                    # exactly the counts that are not in the ledger (nothing lost, none twice);
                    # no ack before the write committed. An older agent (demand without calls)
                    # is not in the ledger and keeps the tracker's seq
                    try:
                        prior_seq = await ledger.record(report)
                    except RetiredIncarnation as e:  # never counted twice: refused, by field
                        rejected.inc()
                        metrics.report_rejects.labels("retired").inc()
                        yield report_ack(msg.seq, version, e)
                        continue
                    except Exception as e:  # noqa: BLE001 - any failure: the agent settles it next stream
                        metrics.store_errors.labels("ledger").inc()
                        await context.abort(grpc.StatusCode.UNAVAILABLE, f"ledger write failed: {e!r}")
                if report.demand:
                    counting = True
                    metrics.count_lookups(report.demand)
                if out.foreign_excess:
                    # flagged, not planned on: the metric now, an audit entry at most once
                    # a minute per center (the leader's timer writes it)
                    metrics.foreign_demand_excess.labels(center).inc(out.foreign_excess)
                leader.wake_by(out.act_by)
                accepted.inc()
                offered = brain.tracker.calls_seen(center)[1] - offered_before
                if offered:
                    metrics.acd_offered.labels(center).inc(offered)
                for target, n in report.routed_to.items():
                    if n:
                        # the proto counts calls per (origin center, receiving center); a center's
                        # lookups serve the branches it hosts, so the origin center stands for them
                        metrics.calls_routed.labels(center, target).inc(n)
                # silent centers this center's agent is asked to probe (issue 16): on this ack,
                # the soonest the request can reach it
                probe = brain.probe_requests(center)
                if probe:
                    metrics.probe_requests.inc(len(probe))
                yield report_ack(msg.seq, version, prior_accepted_seq=prior_seq, probe=probe)
        finally:
            metrics.report_streams.dec()
            if center and leader.brain is brain and brain is not None:
                brain.stream_closed(center, loop.time())
                leader.wake()
