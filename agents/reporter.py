"""The agent's load reports to the control-plane leader, every interval, over one Report stream.

What it counts and numbers (SeqStore, RoutedCounter, DemandLedger) is in counting.py.

- `Reporter`: samples the ACD, builds a `Report`, and keeps a stream to the leader with deadlines,
  keepalive, leader redirects and jittered exponential backoff across endpoints.

Must not: queue old reports for later (a late report is a lie about the present: F12), block the
event loop, or take decisions on the wall clock (it is only stamped into `sent_at`: F13).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from agents.acd import ACD
from agents.counting import (
    DemandLedger,
    RoutedCounter,
    SeqStore,
    demand_of,
    split_calls,
)
from agents.plancache import _short, channel_options
from controlplane.core.backoff import Backoff
from controlplane.core.model import MAX_COUNT, MAX_TARGETS_PER_REPORT, Report

log = logging.getLogger("callroute.agent.report")

# Reports waiting for the stream: one interval's worth. Anything older is stale and dropped.
OUTBOX_SIZE = 2
_LEADER_RE = re.compile(r"leader at ([^\s;,]+:\d+)")


class Reporter:
    """Builds a report every interval and keeps it flowing to the control-plane leader."""

    def __init__(self, center: str, acd: ACD, counter: RoutedCounter, seqs: SeqStore,
                 endpoints: Sequence[str], *, interval_s: float = 0.5,
                 wall: Callable[[], float] = time.time, clock: Callable[[], float] = time.monotonic,
                 keepalive_time_s: float = 10.0, keepalive_timeout_s: float = 5.0,
                 deadline_s: float = 5.0, backoff_initial_s: float = 0.1, backoff_max_s: float = 3.0,
                 stream_max_age_s: float = 600.0, seed: int | None = None,
                 known_centers: frozenset[str] | None = None,
                 known_branches: frozenset[str] | None = None,
                 known_skills: frozenset[str] | None = None,
                 on_plan_version: Callable[[int], None] | None = None, tls: Any = None,
                 via: dict[str, str] | None = None) -> None:
        self.center = center
        # leader redirects name the control plane's own address; this center may reach it elsewhere
        self.via = dict(via or {})
        # wire.tls.ClientTLS, or None for plaintext
        self.tls = tls
        self.acd = acd
        self.counter = counter
        self.seqs = seqs
        self.endpoints = list(endpoints)
        self.interval_s = interval_s
        self.wall = wall
        self.clock = clock
        self.keepalive = (keepalive_time_s, keepalive_timeout_s)
        self.deadline_s = deadline_s
        self.stream_max_age_s = stream_max_age_s
        self.backoff = Backoff(backoff_initial_s, backoff_max_s, random.Random(seed))
        self.known_centers = known_centers
        # the topology's ids: demand for others would get the whole report rejected (B2), load
        # included, so it is discarded here instead (a plan from another topology: counted below)
        self.known_branches = known_branches
        self.known_skills = known_skills
        self.ledger = DemandLedger()
        # the ACD's answered/abandoned per (skill, outcome), carried the same way as the calls
        # (the ledger's ACD rows, core/ledger.py): counted once by (center, incarnation, seq)
        self.outcomes = DemandLedger()
        # settle() closes the tally after one last sample: the ACD goes on answering queued calls
        # while the agent stops, and a stop must not wait for a tally that never ends (those
        # later ones are counted here, and reported by the next incarnation's ACD only if its
        # ACD still holds them: a simulated ACD does not)
        self._outcomes_closed = 0  # 0 open, 1 closing (one more sample), 2 closed
        self.outcomes_after_close = 0
        self.demand_discarded = 0
        self.on_plan_version = on_plan_version  # every ack names the leader's latest plan
        # simulation: given {target center: {skill: calls}} routed to other centers this interval
        self.deliver: Callable[[dict[str, dict[str, int]]], None] | None = None
        # (monotonic build time, report): a report older than one interval is stale when sent.
        # One queue per stream (`_streams`), ended with None: see `_session`
        self.outbox: asyncio.Queue[tuple[float, Report] | None] = asyncio.Queue(OUTBOX_SIZE)
        self.state = "connecting"  # connecting | connected | backoff | stopped
        self.endpoint = ""
        self.sent = self.acked = self.rejected = self.dropped = self.reconnects = 0
        self.last_error = ""
        self.cp_plan_version = 0
        self._unacked: dict[int, float] = {}  # seq -> monotonic send time (stuck-stream watchdog)
        self._call: Any = None
        self._stuck = False  # the watchdog cancelled the call: a reconnect, not a shutdown
        self._stop = asyncio.Event()
        # issue 16: answers the control plane's probe requests (agents.probe.PeerProber; main sets
        # it when the agent has peers); `report_now` sends its answers without waiting an interval
        self.prober: Any = None
        # F21: agents.probe.PathProber, whose broken paths every report carries (main sets it)
        self.paths: Any = None
        self._early = asyncio.Event()
        self._progress = asyncio.Event()  # an ack came or a stream opened (settle waits on it)
        # the ACD messages held until acknowledged (agents.pushacd.AcdCarry; the push ACD has one)
        self.carry: Any = getattr(acd, "carry", None)
        # ACD messages still held when settle() gave up (logged; the agent's exit metric)
        self.acd_unsent_at_stop = 0

    def report_now(self) -> None:
        """Build and send the next report now (probe answers the control plane is waiting for)."""
        self._early.set()

    def stop(self) -> None:
        self._stop.set()

    async def settle(self, timeout_s: float) -> bool:
        """Report until every count is acknowledged, or `timeout_s` passes (then False): a graceful
        stop, once the lookup listeners are closed, leaves no call out of the billing ledger."""
        deadline = self.clock() + timeout_s
        self._outcomes_closed = max(self._outcomes_closed, 1)
        while (self.counter.counts or self.ledger.outstanding() or self.outcomes.outstanding()
               or self._carried()):
            left = deadline - self.clock()
            if left <= 0:
                self.acd_unsent_at_stop = self._carried()
                kept = ("kept in the state dir, re-sent at the next start"
                        if getattr(self.carry, "journal", None) is not None else "lost: no state dir")
                log.warning("stopping with %d lookups and %d ACD messages not acknowledged by the "
                            "control plane (ACD messages: %s)",
                            sum(self.counter.counts.values()) + self.ledger.outstanding(),
                            self.acd_unsent_at_stop, kept)
                return False
            self._progress.clear()
            self.report_now()
            with contextlib.suppress(TimeoutError):  # until an ack or a new stream, bounded
                async with asyncio.timeout(left):
                    await self._progress.wait()
        return True

    def _carried(self) -> int:
        return self.carry.outstanding() if self.carry is not None else 0

    # ------------------------------------------------------------ building reports

    def build(self, now: float) -> Report | None:
        calls = self.counter.swap()
        routed, _ = split_calls(calls)
        routed_to: dict[str, int] = {}
        own: dict[str, int] = {}
        others: dict[str, dict[str, int]] = {}
        for (target, skill), n in routed.items():
            if not target:
                continue  # overload answers route nowhere
            if self.known_centers is not None and target not in self.known_centers:
                continue
            routed_to[target] = routed_to.get(target, 0) + n
            if target == self.center:
                own[skill] = own.get(skill, 0) + n
            else:
                others.setdefault(target, {})[skill] = others.get(target, {}).get(skill, 0) + n
        self.acd.offer_routed(own, now)
        if others and self.deliver is not None:
            self.deliver(others)
        self._count_demand(self._billable(calls))
        skills = self.acd.sample(now)
        if skills is None:
            if self.carry is None or not self.carry.pending:
                return None  # the demand stays pending for the next report
            # the ACD went quiet holding messages it was told we have: they ride a counts-only
            # report (no gauges, no sign of life to the control plane) rather than wait for a
            # push that may never come, and be lost at a stop
            return self._report(now, {}, {}, counts_only=True)
        self._count_outcomes(skills)
        if len(routed_to) > MAX_TARGETS_PER_REPORT:
            routed_to = dict(sorted(routed_to.items(), key=lambda kv: -kv[1])[:MAX_TARGETS_PER_REPORT])
        routed_to = {c: min(n, MAX_COUNT) for c, n in routed_to.items()}
        return self._report(now, skills, routed_to, counts_only=False)

    def _report(self, now: float, skills: dict[str, Any], routed_to: dict[str, int], *,
                counts_only: bool) -> Report:
        incarnation, seq = self.seqs.take()
        probes = self.prober.take() if self.prober is not None else {}
        # demand and the billing ledger's calls are one carried tally (branch, skill, receiver):
        # both reach the control plane exactly once, and always agree
        carried = self.ledger.take(seq)
        return Report(center=self.center, seq=seq, incarnation=incarnation, sent_at=self.wall(),
                      interval_s=self.interval_s, state=self.acd.state, skills=skills,
                      routed_to=routed_to, demand=demand_of(carried), probes=probes,
                      broken_paths=dict(self.paths.broken) if self.paths is not None else {},
                      calls=carried, acd=self.carry.take() if self.carry is not None else [],
                      outcomes=self.outcomes.take(seq), counts_only=counts_only,
                      gauges_from=None if counts_only else getattr(self.acd, "gauges_from", None),
                      # agents per skill set, each counted once (issue 17 item 4): gauges, so not
                      # on a counts-only report; an adapter without them sends none
                      skill_sets=[] if counts_only else list(getattr(self.acd, "skill_sets", ())))

    def _count_outcomes(self, skills: dict[str, Any]) -> None:
        """The sample's answered/abandoned into the carried tally; a skill the control plane does
        not know would get the whole report refused, so it is left out (as demand's is)."""
        add: dict[tuple[str, ...], int] = {}
        if self._outcomes_closed == 2:
            self.outcomes_after_close += sum(v.answered + v.abandoned for v in skills.values())
            return
        if self._outcomes_closed == 1:
            self._outcomes_closed = 2
        for skill, load in skills.items():
            if self.known_skills is not None and skill not in self.known_skills:
                continue
            if load.answered:
                add[(skill, "answered")] = load.answered
            if load.abandoned:
                add[(skill, "abandoned")] = load.abandoned
        self.outcomes.add(add)

    def _billable(self, calls: dict[tuple[str, str, str], int]) -> dict[tuple[str, ...], int]:
        """The counter's calls, with a receiver outside the topology (a plan from another one)
        folded into "" (no receiver of ours): the control plane would refuse the whole report."""
        known = self.known_centers
        if known is None:
            return dict(calls)
        out: dict[tuple[str, ...], int] = {}
        for (b, s, t), n in calls.items():
            key = (b, s, t if (not t or t in known) else "")
            out[key] = out.get(key, 0) + n
        return out

    def _count_demand(self, counts: dict[tuple[str, ...], int]) -> None:
        branches, skills = self.known_branches, self.known_skills
        if branches is not None or skills is not None:
            for key in [k for k in counts if (branches is not None and k[0] not in branches)
                        or (skills is not None and k[1] not in skills)]:
                self.demand_discarded += counts.pop(key)
        self.ledger.add(counts)

    def _drop(self, r: Report) -> None:
        """A report that will not be sent: the load it describes is stale, its demand is not."""
        self.dropped += 1
        self.ledger.unsent(r.seq, r.calls if r.calls else r.demand)
        self.outcomes.unsent(r.seq, r.outcomes)
        if r.acd and self.carry is not None:
            self.carry.put_back(r.acd)

    def _enqueue(self, r: Report, now: float) -> None:
        if self.state != "connected":
            self._drop(r)  # nobody to tell; a late report would describe the past
            return
        while self.outbox.full():
            self._drop(_report_of(self.outbox.get_nowait()))
        self.outbox.put_nowait((now, r))

    # ------------------------------------------------------------ running

    async def run(self) -> None:
        """Report until stop(); a task that dies takes the reporter down with it (no orphans)."""
        tasks = [asyncio.create_task(self._ticks()), asyncio.create_task(self._streams())]
        stop = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait([*tasks, stop], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stop:
                    if t.cancelled():
                        raise RuntimeError(f"{t.get_name()} was cancelled")
                    if t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
        finally:
            for t in (*tasks, stop):
                t.cancel()
            await asyncio.gather(*tasks, stop, return_exceptions=True)
            self.state = "stopped"

    async def _ticks(self) -> None:
        next_at = self.clock()
        while True:
            now = self.clock()
            if now < next_at and not self._early.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(next_at - now):
                        await self._early.wait()
                now = self.clock()
            self._early.clear()
            if now >= next_at:
                # after a pause (SIGSTOP, a stalled loop) skip the missed ticks instead of bursting
                next_at = max(next_at + self.interval_s, now + self.interval_s / 2)
            # else an early report (probe answers): the regular ones keep their cadence
            try:
                r = self.build(now)
            except Exception:  # noqa: BLE001 - one bad sample must not end reporting
                log.exception("building a report failed")
                continue
            if r is not None:
                self._enqueue(r, now)
            self._watchdog(now)

    def _watchdog(self, now: float) -> None:
        if self._unacked and self._call is not None:
            oldest = min(self._unacked.values())
            if now - oldest > self.deadline_s:
                self.last_error = f"no ack within {self.deadline_s} s"
                log.warning("report stream to %s stuck: %s", self.endpoint, self.last_error)
                self._stuck = True
                self._call.cancel()

    async def _streams(self) -> None:
        if not self.endpoints:
            self.state = "stopped"
            await self._stop.wait()
            return
        i = 0
        redirect: str | None = None
        while True:
            ep = redirect or self.endpoints[i % len(self.endpoints)]
            redirect = None
            self.state = "connecting"
            # a fresh queue per stream: grpc keeps polling a finished call's request iterator (it
            # stops it only on a local cancel), so a stream the server ended (a follower's "not
            # leader", an abort) would otherwise take the next stream's first report, mark it
            # sent and never send it: its counts were then lost once the control plane's mark
            # passed its seq (tests/test_reporter_reconnect.py)
            self.outbox = asyncio.Queue(OUTBOX_SIZE)
            try:
                redirect = await self._session(ep)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any stream failure: next endpoint, with backoff
                self.last_error = _short(e)
                log.info("report stream to %s ended: %s", ep, self.last_error)
                redirect = _leader_hint(e)
                if redirect is not None:
                    redirect = self.via.get(redirect, redirect)
            self._call = None
            self._unacked.clear()
            self.ledger.stream_ended()
            self.outcomes.stream_ended()
            if self.carry is not None:
                self.carry.stream_ended()  # sent again: the control plane counts each once
            while not self.outbox.empty():
                self._drop(_report_of(self.outbox.get_nowait()))
            self.outbox.put_nowait(None)  # ends that stream's request iterator if grpc still polls it
            self.reconnects += 1
            if redirect is None:
                i += 1
            self.state = "backoff"
            await asyncio.sleep(self.backoff.next() if redirect is None else 0.0)

    async def _session(self, ep: str) -> str | None:
        from callroute.v1 import report_pb2_grpc
        from wire.convert import report_to_pb
        from wire.tls import open_channel

        async with open_channel(ep, self.tls, channel_options(*self.keepalive)) as ch:
            await asyncio.wait_for(ch.channel_ready(), self.deadline_s)
            stub = report_pb2_grpc.ReportServiceStub(ch)
            opened = self.clock()
            outbox = self.outbox  # this stream's own: never a later stream's reports

            async def requests():  # type: ignore[no-untyped-def]
                while self.clock() - opened < self.stream_max_age_s:
                    item = await outbox.get()
                    if item is None:
                        return  # the stream is over
                    built, r = item
                    now = self.clock()
                    if now - built > self.interval_s:
                        # built before a pause (SIGSTOP, a stall): it describes the past and
                        # the control plane must not take it for the present (F12)
                        self._drop(r)
                        continue
                    self._unacked[r.seq] = now
                    self.ledger.sent(r.seq, r.calls if r.calls else r.demand)
                    self.outcomes.sent(r.seq, r.outcomes)
                    if self.carry is not None:
                        self.carry.sent(r.seq, r.acd)
                    self.sent += 1
                    yield report_to_pb(r)

            call = stub.Report(requests())
            self._call = call
            self._stuck = False
            self.endpoint = ep
            self.state = "connected"
            self._progress.set()
            try:
                await self._read_acks(call)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._stuck and (task is None or not task.cancelling()):
                    raise StuckStream(self.last_error) from None
                raise
            return None

    async def _read_acks(self, call: Any) -> None:
        async for ack in call:
            self._unacked.pop(ack.seq, None)
            self.ledger.acked(ack.seq, ack.accepted, ack.prior_accepted_seq)
            self.outcomes.acked(ack.seq, ack.accepted, ack.prior_accepted_seq)
            if self.carry is not None:
                self.carry.acked(ack.seq, ack.accepted)
            self._progress.set()
            self.backoff.reset()
            if ack.accepted:
                self.acked += 1
            else:
                self.rejected += 1
                self.last_error = ack.error
                if ack.error_field in ("seq", "incarnation"):
                    self.seqs.stale(ack.seq)
                log.warning("report seq %s rejected: %s", ack.seq, ack.error)
            if ack.probe and self.prober is not None:
                self.prober.request(c for c in ack.probe if c != self.center)
            if ack.plan_version:
                self.cp_plan_version = ack.plan_version
                if self.on_plan_version is not None:
                    self.on_plan_version(ack.plan_version)


def _report_of(item: tuple[float, Report] | None) -> Report:
    assert item is not None, "the end-of-stream marker is only put after the queue is drained"
    return item[1]


class StuckStream(Exception):
    """The control plane took reports but acknowledged none within the deadline (F11)."""


def _leader_hint(e: BaseException) -> str | None:
    """The leader's address from a non-leader's FAILED_PRECONDITION "not leader; leader at H:P"."""
    details = getattr(e, "details", None)
    if not callable(details):
        return None
    try:
        text = details() or ""
    except Exception:  # noqa: BLE001
        return None
    m = _LEADER_RE.search(text)
    return m.group(1) if m else None
