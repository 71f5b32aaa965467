"""The health tracker: from centers' reports and report-stream events to a status and weight per center.

It is the one place that decides whether a center is HEALTHY, STALE, DOWN, FAILING or UNKNOWN; the
planner only reads `view(now)`. It is a pure, stateful core object in the aioquic style: every input
(`observe`, `stream_opened`, `stream_closed`, `expire`) takes `now` (monotonic seconds from the caller)
and returns the status changes it caused as values; `next_deadline()` tells the shell when to call
`expire` next. It must not read the clock, do I/O, import asyncio/grpc, or trust a report's `sent_at`:
a wall-clock jump on an agent (F13) must change no decision here.

The rules, per center (S = stale_after_intervals * interval_s, the time after which reports are late):

  UNKNOWN  -- first accepted report ------------------------------------------------> HEALTHY
  UNKNOWN  -- no report within down_after_s of the tracker's start ------------------> DOWN
  HEALTHY  -- no report for S, or its report stream closed -------------------------> STALE
  STALE    -- a report arrives (or the closed stream reopens while reports are fresh) -> HEALTHY
  STALE    -- no report for down_after_s, or stream closed for stream_grace_s --------> DOWN
              (not before a vouch ends: peers reached it, only our link is cut; issue 16, F19)
  HEALTHY/STALE -- confirm_down: every peer asked failed to reach it (F18) ------------> DOWN
  DOWN     -- recover_intervals consecutive fresh reports (failback, no oscillation) -> HEALTHY
  HEALTHY  -- a failing detector fires on the last failing_window_intervals reports --> FAILING
  FAILING  -- failing_holddown_s passes and the detector no longer fires -----------> HEALTHY
              (on probation: failing again within failing_probation_s doubles the hold-down, capped;
              a detector still firing when the hold-down ends is such a relapse at once)
  FAILING  -- reports stop / stream closes -----------------------------------------> STALE, DOWN
  (a STALE or recovering DOWN center whose failing hold-down still runs returns to FAILING, not HEALTHY)

The failing detectors (F17; the 2020-02-04 incident, "the main center cannot receive the overflow
calls"), judged when reports arrive, over each center's last failing_window_intervals reports:
  (a) calls never arrive: the calls all centers' lookups routed to X add up to at least
      failing_min_calls and X's own offered count is under failing_arrival_ratio of that;
  (b) not answering: X was offered at least failing_min_calls, answered none, and its queue rose
      across the window -- unless every skill with calls waiting had all its agents on calls in every
      report of the window: that is a saturated center (a surge, overflow's job), not a dead one.
A center that is draining or closed by its own report is never judged: refusing calls is its intent.

Weights: HEALTHY and UNKNOWN 1.0 (a fresh control plane must not DR the whole network: the planner
uses topology staffing); STALE decays linearly from 1.0 when it went stale to 0.0 at its DOWN time
(neither trusted for a minute like Cisco ICM's frozen data, nor dropped at once; the planner keeps a
stale center's own calls home until DOWN, so a partition is one route change (F8), and the decay tells
operators how close to DOWN it is); DOWN 0.0; FAILING
1.0 when calls routed to it do not arrive (its own calls may still work; the planner stops using it as
a receiver) and 0.0 when it does not answer. A STALE center still in a failing hold-down keeps the
failing weight as a ceiling, so going silent never raises a center's weight.

Sequence numbers (F12, B14): each agent process reports under its own incarnation (epoch), and seqs
strictly increase within one. Per center the tracker keeps the last seq of up to MAX_INCARNATIONS
incarnations: a new incarnation is accepted whatever its seq (a restarted agent, a new pod with an
empty state dir), two replicas' reports both count, each once; an unknown incarnation below the
center's floor (older than one forgotten) is stale. Room for a newcomer is made by forgetting the
least recently heard incarnation silent for the stale time; while all are live a newcomer is refused.

Two error families leave this module: `InvalidInput` for bad input (unknown center, non-finite time,
bad settings) and its subclass `StaleReport` for a report whose sequence number is not new (F12).

Why one module of about 1,000 lines: it is one state machine (HealthTracker), whose invariants span
its methods: a report, a stream event and the passage of time each change the same per-center
record, and the detectors read windows that the report path maintains incrementally. Split, the
invariants would cross module lines; the pieces that stand alone already live apart
(core/suspicion.py, core/paths.py, core/acdseen.py).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable

import msgspec

from controlplane.core.acdseen import AcdSeen
from controlplane.core.model import (
    AdminState,
    CenterHealth,
    InvalidInput,
    Report,
    SkillLoad,
    SkillSetAgents,
    Status,
    check_id,
)

# A recovering center's report counts toward recover_intervals only if it comes at least this share of
# an interval after the last one counted: an agent flushing a burst of buffered reports on reconnect
# has not been up for four intervals, and failback must take real time (ordered, no oscillation).
MIN_REPORT_SPACING = 0.5

# A report stays in the failing detectors' window this many intervals past the window's nominal span:
# reports jitter by tens of milliseconds, and a window that lost its oldest report just before each
# evaluation would never be full. Older reports are dropped so a sender that went silent stops counting.
WINDOW_SLACK_INTERVALS = 1

# Report incarnations remembered per center (see HealthTracker.observe): two agent replicas of a
# center are two live incarnations, and each restart adds one; 8 leaves room for replicas mid-rollout
# while a center's sequence state stays a few hundred bytes. Beyond it the incarnation heard from
# least recently, if silent for the stale time, is forgotten; if all are live, a new one is refused.
MAX_INCARNATIONS = 8
# the largest report seq and incarnation: the wire's uint64
MAX_SEQ = 2**64 - 1

# Upper bounds on settings: beyond these a value is a unit mistake (ms typed for s), not a choice.
MAX_SETTING_S = 86_400.0  # a day
MAX_SETTING_COUNT = 1_000


class HealthSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Timers and thresholds of the health tracker; every default says why it is that number."""

    # agents report every 0.5 s: fast enough to see a queue build within a second, cheap at 40 centers
    interval_s: float = 0.5
    # F8: stale after 3 missed intervals (1.5 s): one late or lost report is jitter, three are not
    stale_after_intervals: int = 3
    # reports stop but the stream is not seen closing (a partition): the center is decayed while
    # stale and dropped only then; Cisco ICM trusts frozen data for 60 s, far too long for DR, and
    # 6 s rides out a GC pause or a congested link without moving a whole center's calls
    down_after_s: float = 6.0
    # a closed report stream makes the center unreachable at once and DOWN after this grace unless it
    # reconnects: a rolling agent restart (sub-second) does not trigger DR, while a killed center is
    # DOWN well within the 2 s DR budget of F14
    stream_grace_s: float = 1.0
    # the failing detectors judge this many of a center's latest reports: F17 demands detection within
    # 3 report intervals, and fewer would judge a single noisy interval
    failing_window_intervals: int = 3
    # under this many calls in the window the evidence is noise (a quiet night, calls still in flight)
    failing_min_calls: int = 5
    # calls reported by the receiver an interval later than by the sender still arrive; fewer than
    # half of what was sent arriving is a broken path, not timing (the 2020-02-04 incident)
    failing_arrival_ratio: float = 0.5
    # a failing center stays out at least this long: repairs take minutes, and routes flapping
    # every few seconds hurt callers more than a 30 s wait before retrying the center
    failing_holddown_s: float = 30.0
    # each relapse doubles the hold-down up to this (30, 60, 120, 240, 480 s): a repaired center
    # returns within 8 minutes without an operator, a broken one is not retried every 30 s all night
    failing_holddown_max_s: float = 480.0
    # after a hold-down the center is on probation this long: failing again within it is a relapse;
    # two minutes is long enough for overflow to reach it again and the detectors to judge it
    failing_probation_s: float = 120.0
    # the per-origin arrival check looks back up to this long to gather failing_min_calls sent by
    # other centers: a DR flow of under a call a second (Wuhan's into Chengdu) never fills three
    # intervals, and half a minute still beats a broken overflow path found by hand at 3 a.m.
    failing_arrival_window_s: float = 30.0
    # a DOWN center must report this many consecutive fresh intervals before HEALTHY: ordered
    # failback (2 s at 0.5 s), so a center that comes and goes does not drag routes back and forth
    recover_intervals: int = 4

    def __post_init__(self) -> None:
        for name in ("interval_s", "down_after_s", "stream_grace_s", "failing_holddown_s",
                     "failing_holddown_max_s", "failing_probation_s", "failing_arrival_window_s"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not math.isfinite(v) or not 0 < v <= MAX_SETTING_S:
                raise InvalidInput(name, v, f"must be a number in (0, {MAX_SETTING_S:g}] seconds")
        for name, lo in (("stale_after_intervals", 1), ("failing_window_intervals", 2),
                         ("failing_min_calls", 1), ("recover_intervals", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or not lo <= v <= MAX_SETTING_COUNT:
                raise InvalidInput(name, v, f"must be an integer in [{lo}, {MAX_SETTING_COUNT}]")
        r = self.failing_arrival_ratio
        if not isinstance(r, int | float) or not math.isfinite(r) or not 0 < r <= 1:
            raise InvalidInput("failing_arrival_ratio", r, "must be a number in (0, 1]")
        if self.down_after_s <= self.stale_after_s:
            # the STALE phase would be empty: a partitioned center would drop without decaying
            raise InvalidInput("down_after_s", self.down_after_s,
                               f"must exceed stale_after_intervals * interval_s ({self.stale_after_s:g})")
        if self.failing_holddown_max_s < self.failing_holddown_s:
            raise InvalidInput("failing_holddown_max_s", self.failing_holddown_max_s,
                               f"must be at least failing_holddown_s ({self.failing_holddown_s:g})")

    @property
    def stale_after_s(self) -> float:
        return self.stale_after_intervals * self.interval_s

    @property
    def window_horizon_s(self) -> float:
        return (self.failing_window_intervals + WINDOW_SLACK_INTERVALS) * self.interval_s


class HealthChange(msgspec.Struct, frozen=True):
    """One center's status changed. `at` is when the new status began (a missed deadline's time when
    expire() runs late, else the `now` of the event that caused it)."""

    center: str
    old: Status
    new: Status
    at: float
    reason: str


class HealthSnapshot(msgspec.Struct, frozen=True):
    """What survives a control-plane restart: the last accepted sequence number per center and
    report incarnation, and each center's incarnation floor.

    `last_seq` holds incarnation 0's (agents from before incarnations; what older control planes
    wrote and read), `seqs` every other incarnation's, `floors` the incarnation below which a
    center's reports are stale. Times do not survive: monotonic clocks of two processes share no
    origin, so a new tracker starts every center UNKNOWN and lets fresh reports decide.
    """

    last_seq: dict[str, int] = {}
    seqs: dict[str, dict[int, int]] = {}
    floors: dict[str, int] = {}


class StaleReport(InvalidInput):
    """F12: a report whose seq is not after the last accepted one of its incarnation (a paused agent
    resumed, a replay), or whose incarnation is older than the center's floor."""

    def __init__(self, center: str, seq: int, last_seq: int, incarnation: int = 0, why: str = "") -> None:
        self.center = center
        self.last_seq = last_seq
        self.incarnation = incarnation
        if why:
            super().__init__("incarnation", incarnation, why)
            return
        of = f" incarnation {incarnation}" if incarnation else ""
        super().__init__("seq", seq, f"not after the last accepted seq {last_seq} of center {center!r}{of}")


class _Sample(msgspec.Struct, frozen=True):
    """One accepted report, reduced to what the failing detectors need."""

    at: float
    offered: int
    answered: int
    queued: int
    # every skill with calls waiting had all its logged-in agents on calls: a slow queue, not a dead one
    saturated: bool
    routed_to: dict[str, int]
    kept: int  # routed_to.get(own center): calls its own lookups kept home
    # `offered`, `answered` and `kept` summed over every sample of the center up to this one: the
    # detectors sum a stretch of the window as a difference of two of these instead of walking it
    offered_total: int
    answered_total: int
    kept_total: int


# Looked up once: reading a member off an enum class costs more than a global, on every report.
_HEALTHY = Status.HEALTHY
_OPEN = AdminState.OPEN
_NEVER = -math.inf  # _since_gap when there is no gap in the window

# The routed_to of a sample whose report routed nothing: shared, since samples never change it.
_NO_ROUTES: dict[str, int] = {}


class _Failure(msgspec.Struct, frozen=True):
    reason: str
    weight: float


class _Verdict(msgspec.Struct, frozen=True):
    status: Status
    weight: float
    reason: str
    since: float


class _Center(msgspec.Struct):
    """The tracker's mutable record of one center; never leaves this module."""

    id: str
    position: int  # in the tracker's center order: changes are handed out in that order
    window: deque[_Sample]
    times: deque[float]  # the window's sample times, apart for bisection without a key function
    status: Status = Status.UNKNOWN
    # incarnation -> [last accepted seq, when last heard (-inf: restored, never heard by us)]
    seqs: dict[int, list[float]] = {}
    floor: int = 0  # reports from an unknown incarnation below this are stale
    last_report_at: float | None = None
    skills: dict[str, SkillLoad] = {}
    # agents per skill set (Report.skill_sets), kept and replaced with the other gauges
    skill_sets: tuple[SkillSetAgents, ...] = ()
    state: AdminState = AdminState.OPEN
    open_streams: int = 0
    closed_at: float | None = None  # the last report stream closed then; None while one is open
    down_since: float | None = None  # DOWN is latched: only a recovery streak clears it
    down_reason: str = ""
    streak: int = 0  # consecutive fresh reports while DOWN
    streak_at: float = -math.inf  # when the last report counted toward the streak arrived
    fail_since: float = 0.0
    fail_until: float | None = None  # end of the failing hold-down; None when not failing
    fail: _Failure | None = None
    holddown_s: float = 0.0  # the hold-down length used last (doubles on relapse)
    probation_until: float = -math.inf
    samples: int = 0  # samples ever appended to window: the newest has serial `samples`
    reports: int = 0  # reports accepted (two replicas' reports of one interval share a sample)
    # the incarnations whose reports the newest sample holds: a second replica's report of the same
    # interval joins it, so that a sample stays an interval whatever the number of replicas
    sample_incs: set[int] = set()
    # the ACD messages counted already (two replicas read one ACD): None until the first report
    # that carries any
    acd_seen: AcdSeen | None = None
    # calls offered / answered within the service-level threshold over every accepted report: a
    # reader that samples slower than reports arrive (the drill runner) takes differences of these
    # and misses no report's calls
    offered_ever: int = 0
    within_ever: int = 0
    evicted: int = 0  # samples - len(window): serials up to this one have left the window
    # The latest reporting gap (two consecutive samples further apart than 2 intervals), kept as
    # samples arrive instead of rescanning the window on every detection: `gap_since` is when the
    # run after it began, and it counts while its earlier sample (serial `gap_serial`) is in window.
    gap_since: float = -math.inf
    gap_serial: int = 0
    touched: bool = False  # its record changed since _collect last judged it (see HealthTracker._due)
    # peers reached the silent center (issue 16, F19: only our link to it is cut): it is not DOWN
    # before this time whatever its silence, and keeps weight 1.0 (its routes) while STALE
    vouched_until: float = -math.inf
    # when a live topology added it (issue 18): its "no report since start" counts from then
    added_at: float = -math.inf


class HealthTracker:
    """Status and weight per center from reports, stream events and the passage of `now`."""

    def __init__(self, centers: Iterable[str], settings: HealthSettings, now: float) -> None:
        self._s = settings
        self._start = _finite("now", now)
        self._now = self._start
        # changes found while handling a call that then raised (a stale report): handed out by the next
        # call, so that a rejected report still applies its `now` without losing what that changed
        self._pending: list[HealthChange] = []
        self._centers: dict[str, _Center] = {}
        for cid in centers:
            check_id("centers", cid)
            if cid in self._centers:
                raise InvalidInput("centers", cid, "duplicate center")
            # enough samples for the longest look-back of the per-origin arrival check
            keep = max(settings.failing_window_intervals,
                       math.ceil(settings.failing_arrival_window_s / settings.interval_s)
                       + WINDOW_SLACK_INTERVALS)
            self._centers[cid] = _Center(cid, len(self._centers), deque(maxlen=keep), deque(maxlen=keep),
                                         holddown_s=settings.failing_holddown_s)
        # Per receiver, the other centers' samples that routed calls to it, oldest first, as
        # (at, origin, origin's sample serial, calls): the arrival checks sum these instead of
        # rescanning every other center's window for each receiver on every report. An entry
        # counts while its sample is still in the origin's window; one older than twice the longest
        # look-back (twice: clear of any rounding at the edge) is dropped.
        self._sent_to: dict[str, deque[tuple[float, _Center, int, int]]] = {
            cid: deque() for cid in self._centers}
        longest = max(settings.window_horizon_s, settings.failing_window_intervals * settings.interval_s,
                      settings.failing_arrival_window_s) + WINDOW_SLACK_INTERVALS * settings.interval_s
        self._forget_after_s = 2 * longest
        # Settings read on every report, computed once (the same float expressions as the properties).
        self._stale_after_s = settings.stale_after_s
        self._down_after_s = settings.down_after_s
        self._window_horizon_s = settings.window_horizon_s
        self._slack_s = WINDOW_SLACK_INTERVALS * settings.interval_s
        self._why_silent = f"no report for {settings.down_after_s:g} s"
        self._why_closed = f"report stream closed for {settings.stream_grace_s:g} s"
        # A center's status moves with `now` only at its deadlines (stale, DOWN, end of a failing
        # hold-down, DOWN for never reporting): until the earliest of them, `_due`, a call only needs
        # to judge the centers whose record it changed (`_touched`), not all of them twice. `_due` may
        # be early, never late: at or after it, every center is judged. It is the minimum of `_dues`,
        # each center's _next_change (by position) as of when its record last changed or it was last
        # judged: a reporting center's deadline moves on with each report, so the minimum must too,
        # or every center would be judged about once a second for nothing.
        self._due = self._start + settings.down_after_s
        self._dues = [self._due] * len(self._centers)
        # the per-origin arrival check's look-backs: the failing window, then doubling up to
        # failing_arrival_window_s (the last one is at least that)
        span = settings.failing_window_intervals * settings.interval_s
        self._look_back_spans = [span]
        while span < settings.failing_arrival_window_s:
            span = min(2 * span, settings.failing_arrival_window_s)
            self._look_back_spans.append(span)
        self._longest_span_s = max(self._look_back_spans[0], settings.failing_arrival_window_s)
        self._touched: list[_Center] = []
        # the rejection _admit found, raised by observe after it saved the changes due
        self._stale = StaleReport("", 0, 0)

    # ------------------------------------------------------------------ inputs

    def add_center(self, cid: str, now: float) -> None:
        """A center a live topology added (issue 18): UNKNOWN until its first report, DOWN when
        none comes within down_after_s of `now`. A center already known is left as it is."""
        check_id("centers", cid)
        if cid in self._centers:
            return
        now = self._clamp(now)
        s = self._s
        keep = max(s.failing_window_intervals,
                   math.ceil(s.failing_arrival_window_s / s.interval_s) + WINDOW_SLACK_INTERVALS)
        c = _Center(cid, len(self._centers), deque(maxlen=keep), deque(maxlen=keep),
                    holddown_s=s.failing_holddown_s, added_at=now)
        self._centers[cid] = c
        self._sent_to[cid] = deque()
        due = now + self._down_after_s
        self._dues.append(due)
        self._due = min(self._due, due)
        self._touch(c)

    def observe(self, report: Report, now: float) -> list[HealthChange]:
        """Take one report, already checked by model.validate_report; returns the changes it caused.

        Raises StaleReport when report.seq is not after the last accepted seq of the center (F12); the
        report is then ignored, but the timeouts due by `now` are applied and the changes they caused
        are returned by the next call.
        """
        c = self._center("center", report.center)
        now = self._clamp(now)
        # self._advance(now), inline: with no deadline passed it only takes the pending changes
        self._now = now
        changes, self._pending = self._pending, []
        if now >= self._due:
            self._latch(now, changes)
        heard = c.seqs.get(report.incarnation)
        if heard is None or report.seq <= heard[0]:
            heard = self._admit(c, report, now, heard)
            if heard is None:
                self._pending = changes + self._collect(now)
                raise self._stale
        if report.counts_only:
            return changes + self._counts_only(c, report, heard, now)
        s = self._s
        if c.down_since is not None:
            # only reports in an unbroken run, spaced like real intervals, earn failback
            fresh = c.last_report_at is not None and now - c.last_report_at <= s.stale_after_s
            if not fresh or c.streak == 0:
                c.streak, c.streak_at = 1, now
            elif now - c.streak_at >= MIN_REPORT_SPACING * s.interval_s:
                c.streak, c.streak_at = c.streak + 1, now
            if c.streak >= s.recover_intervals:
                c.down_since = None
        heard[0], heard[1] = report.seq, now
        c.last_report_at = now
        c.vouched_until = -math.inf  # it speaks for itself again; a later silence needs new word
        gauges = report.gauges_from
        if gauges is None:
            newest = True
        else:
            # two replicas whose pushes diverge: gauges and state only from the newest message
            if c.acd_seen is None:
                c.acd_seen = AcdSeen()
            newest = c.acd_seen.gauges_newest(gauges, now, self._stale_after_s)
        if newest:
            c.skills = dict(report.skills)
            sets = report.skill_sets
            c.skill_sets = tuple(sets) if sets else ()  # most reports have none: no tuple built
            c.state = report.state
        # a report arrived over some stream, so the center reaches us whatever we were told before
        c.closed_at = None
        if c.open_streams < 1:
            c.open_streams = 1
        if not c.touched:  # self._touch(c), inline: this is the simulator's hottest path
            c.touched = True
            self._touched.append(c)
        offered = answered = queued = 0
        waiting, all_busy = False, True
        within = 0
        for load in report.skills.values():
            offered += load.offered
            answered += load.answered
            within += load.answered_within
            queued += load.queued
            if load.queued > 0:
                waiting = True
                all_busy = all_busy and load.busy >= load.logged_in > 0
        if not newest:  # the sample's gauges are the newest message's, kept from before
            queued, waiting, all_busy = 0, False, True
            for load in c.skills.values():
                queued += load.queued
                if load.queued > 0:
                    waiting = True
                    all_busy = all_busy and load.busy >= load.logged_in > 0
        if report.acd:
            # the ACD's counters by message, each counted once whichever replica reports it
            # (core/acdseen.py); the report's own counters would count a message per replica
            if c.acd_seen is None:
                c.acd_seen = AcdSeen()
            offered = answered = within = 0
            for m in c.acd_seen.fresh(report.acd):
                for o, a, w, _ in m.skills.values():
                    offered += o
                    answered += a
                    within += w
        routed_to = report.routed_to
        if not routed_to:
            routed_to = _NO_ROUTES
        elif min(routed_to.values()) > 0:
            routed_to = dict(routed_to)  # a copy: the caller's dict may change after the call
        else:
            routed_to = {k: v for k, v in routed_to.items() if v > 0}
        kept = routed_to.get(c.id, 0)
        window = c.window
        c.reports += 1
        inc = report.incarnation
        incs = c.sample_incs
        merged = bool(window) and inc not in incs and now - window[-1].at < s.interval_s
        if merged:
            # another replica's report of the interval the newest sample covers: one sample of both
            prev = window[-1]
            if prev.routed_to and routed_to:
                merged_to = dict(prev.routed_to)
                for k, v in routed_to.items():
                    merged_to[k] = merged_to.get(k, 0) + v
            else:
                merged_to = routed_to or prev.routed_to
            window[-1] = _Sample(now, prev.offered + offered, prev.answered + answered, queued,
                                 waiting and all_busy, merged_to, prev.kept + kept,
                                 prev.offered_total + offered, prev.answered_total + answered,
                                 prev.kept_total + kept)
            c.times[-1] = now
            incs.add(inc)
        elif window:
            prev = window[-1]
            window.append(_Sample(now, offered, answered, queued, waiting and all_busy, routed_to, kept,
                                  prev.offered_total + offered, prev.answered_total + answered,
                                  prev.kept_total + kept))
            if now - prev.at > 2 * s.interval_s:
                # a gap in its reports: its first report after covers one interval
                c.gap_since, c.gap_serial = now - 0.5 * s.interval_s, c.samples
        else:
            window.append(_Sample(now, offered, answered, queued, waiting and all_busy, routed_to, kept,
                                  offered, answered, kept))
        if not merged:  # a new sample, of this incarnation only so far
            if len(incs) != 1 or inc not in incs:  # the usual single agent keeps its set as it is
                c.sample_incs = {inc}
            c.times.append(now)
            c.samples += 1
        c.offered_ever += offered
        c.within_ever += within
        c.evicted = c.samples - len(window)
        receivers: list[_Center] = []
        if routed_to:
            expired = now - self._forget_after_s
            for rid, n in routed_to.items():
                sent = self._sent_to.get(rid)
                if sent is None or rid == c.id:
                    continue
                sent.append((now, c, c.samples, n))
                while sent[0][0] < expired:
                    sent.popleft()
                receivers.append(self._centers[rid])
        # This report can only change the verdict on the reporter and on the centers it sent calls to.
        # Judging one changes only its own record, never what judging another reads: any order will do.
        stale_at = now + self._stale_after_s
        down_at = now + self._down_after_s
        # The usual report, between deadlines: a HEALTHY center, not in a hold-down, that just reported
        # is HEALTHY again (what _evaluate finds: its deadlines are this report's time plus positive
        # settings), so no verdict is built, and unless a detector fires only its deadline changes.
        usual = (now < self._due and c.status is _HEALTHY and c.down_since is None and c.fail_until is None
                 and now < stale_at and now < down_at)
        judged: tuple[_Center, _Verdict] | None = None
        if usual:
            usual = not self._judge(c, now)
        else:
            verdict = self._evaluate(c, now)
            if verdict.status is _HEALTHY and self._judge(c, now):
                verdict = self._evaluate(c, now)
            judged = (c, verdict)
        for x in receivers:
            if self._evaluate(x, now).status is _HEALTHY:
                self._judge(x, now)
        touched = self._touched
        if usual and len(touched) == 1:
            # self._collect(now) with only the reporter touched and no status change: take its next
            # deadline (_next_change, inline: no hold-down, not DOWN, stream open, reported now)
            c.touched = False
            touched.clear()
            due = stale_at if stale_at < math.inf else math.inf
            dues = self._dues
            dues[c.position] = down_at if down_at < due else due
            self._due = min(dues)
            return changes
        return changes + self._collect(now, judged)

    def _counts_only(self, c: _Center, report: Report, heard: list[float], now: float) -> list[HealthChange]:
        """A silent ACD's held messages (agents/reporter.py): counted once like any, but no sign of
        life -- freshness, failback streak, gauges and state stay as they were, and no sample is
        added (the detectors judge live intervals; a silent center is STALE, not judged)."""
        heard[0], heard[1] = report.seq, now
        c.reports += 1
        if report.acd:
            if c.acd_seen is None:
                c.acd_seen = AcdSeen()
            for m in c.acd_seen.fresh(report.acd):
                for o, _, w, _ in m.skills.values():
                    c.offered_ever += o
                    c.within_ever += w
        return self._collect(now)

    def reported_state(self, center: str) -> AdminState:
        """What the center's own reports say its state is: the newest ACD message's (see observe)."""
        return self._center("center", center).state

    def stream_opened(self, center: str, now: float) -> list[HealthChange]:
        """A report stream from `center` opened; a reconnect within stream_grace_s avoids DOWN."""
        c = self._center("center", center)
        now = self._clamp(now)
        changes = self._advance(now)
        c.open_streams += 1
        c.closed_at = None
        self._touch(c)
        return changes + self._collect(now)

    def stream_closed(self, center: str, now: float) -> list[HealthChange]:
        """A report stream from `center` closed: with none left open it is unreachable at once."""
        c = self._center("center", center)
        now = self._clamp(now)
        changes = self._advance(now)
        c.open_streams = max(0, c.open_streams - 1)
        self._touch(c)
        if c.open_streams == 0 and c.closed_at is None:
            c.closed_at = now
            if c.down_since is not None:
                c.streak = 0  # a recovering center that drops again starts its failback over
        return changes + self._collect(now)

    def vouch(self, center: str, until: float, now: float) -> list[HealthChange]:
        """Peers reached `center` (issue 16, F19): however long it is silent to us, it is not DOWN
        before `until`, and it keeps its routes (weight 1.0) while STALE. Never raises a DOWN one."""
        c = self._center("center", center)
        now = self._clamp(now)
        changes = self._advance(now)
        if c.down_since is None and until > c.vouched_until:
            c.vouched_until = _finite("until", until)
            self._touch(c)
        return changes + self._collect(now)

    def confirm_down(self, center: str, now: float, why: str) -> list[HealthChange]:
        """Peers asked to probe the silent `center` all failed to reach it (issue 16, F18): DOWN now,
        without waiting out down_after_s. Only for a center that has reported and is silent: one
        that never reported is the start grace's to judge. Ends any vouch."""
        c = self._center("center", center)
        now = self._clamp(now)
        changes = self._advance(now)
        if c.down_since is None and c.last_report_at is not None:
            c.vouched_until = -math.inf
            c.down_since, c.down_reason = now, why
            c.streak, c.streak_at = 0, -math.inf
            self._touch(c)
        return changes + self._collect(now)

    def silent(self, now: float, after_s: float) -> dict[str, float]:
        """Centers not DOWN that reported once and then went quiet for `after_s`, or whose report
        streams all closed: center -> when it was last heard (its silence began after that)."""
        out: dict[str, float] = {}
        for cid, c in self._centers.items():
            last = c.last_report_at
            if last is None or c.down_since is not None:
                continue
            if c.closed_at is not None or now - last >= after_s:
                out[cid] = last
        return out

    def expire(self, now: float) -> list[HealthChange]:
        """Apply every timeout due by `now`; returns the changes, oldest first per center."""
        now = self._clamp(now)
        return self._advance(now) + self._collect(now)

    # ------------------------------------------------------------------ queries

    def next_deadline(self) -> float | None:
        """The earliest `now` at which expire() could change something; None when nothing is pending.

        Always after the latest `now` given: every input applies the timeouts due by its `now` first.
        """
        best = min((self._next_change(c, self._now) for c in self._centers.values()), default=math.inf)
        return best if best < math.inf else None

    def view(self, now: float) -> dict[str, CenterHealth]:
        """Status and weight of every center as of `now`; changes nothing (call expire() for those)."""
        now = self._clamp(now)
        out: dict[str, CenterHealth] = {}
        for cid, c in self._centers.items():
            v = self._evaluate(c, now)
            out[cid] = CenterHealth(center=cid, status=v.status, weight=v.weight, skills=dict(c.skills),
                                    state=c.state, reason=v.reason, skill_sets=c.skill_sets)
        return out

    def last_seq(self, center: str, incarnation: int = 0) -> int | None:
        """The last accepted seq of `center`'s reports from `incarnation`; None when none."""
        heard = self._center("center", center).seqs.get(incarnation)
        return None if heard is None else int(heard[0])

    def last_report_at(self, center: str) -> float | None:
        """`now` of the center's last accepted report (any incarnation); None when none."""
        return self._center("center", center).last_report_at

    def calls_seen(self, center: str) -> tuple[int, int, int]:
        """(reports accepted, calls offered, calls answered within the threshold) from `center`
        over all its accepted reports: take differences to cover every report between two reads."""
        c = self._center("center", center)
        return c.reports, c.offered_ever, c.within_ever

    def snapshot(self) -> HealthSnapshot:
        last: dict[str, int] = {}
        seqs: dict[str, dict[int, int]] = {}
        floors: dict[str, int] = {}
        for cid, c in self._centers.items():
            for inc, heard in c.seqs.items():
                if inc == 0:
                    last[cid] = int(heard[0])
                else:
                    seqs.setdefault(cid, {})[inc] = int(heard[0])
            if c.floor:
                floors[cid] = c.floor
        return HealthSnapshot(last, seqs, floors)

    def restore(self, snap: HealthSnapshot) -> None:
        """Resume sequence checking after a restart; centers no longer in the topology are ignored.
        Restored incarnations count as silent: the first to be forgotten when a center runs out of
        room (their agents' times did not survive)."""
        entries = [(cid, 0, seq) for cid, seq in snap.last_seq.items()]
        entries += [(cid, inc, seq) for cid, per in snap.seqs.items() for inc, seq in per.items()]
        for cid, inc, seq in entries:
            if not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
                raise InvalidInput(f"last_seq[{cid}]", seq, f"must be an integer in [0, {MAX_SEQ}]")
            if not isinstance(inc, int) or not 0 <= inc <= MAX_SEQ:
                raise InvalidInput(f"seqs[{cid}]", inc, f"incarnation must be an integer in [0, {MAX_SEQ}]")
        for cid, floor in snap.floors.items():
            if not isinstance(floor, int) or not 0 <= floor <= MAX_SEQ:
                raise InvalidInput(f"floors[{cid}]", floor, f"must be an integer in [0, {MAX_SEQ}]")
            c = self._centers.get(cid)
            if c is not None:
                c.floor = max(c.floor, floor)
        for cid, inc, seq in entries:
            c = self._centers.get(cid)
            if c is None or inc < c.floor:
                continue
            heard = c.seqs.get(inc)
            if heard is None:
                c.seqs[inc] = [seq, -math.inf]
            elif seq > heard[0]:
                heard[0] = seq
        for c in self._centers.values():
            while len(c.seqs) > MAX_INCARNATIONS:
                self._forget(c, min(c.seqs))

    # ------------------------------------------------------------------ report incarnations

    def _admit(self, c: _Center, report: Report, now: float,
               heard: list[float] | None) -> list[float] | None:
        """The sequence rule, for a report that is not simply the next of a known incarnation.

        Per center, each incarnation (an agent process's epoch, e.g. its start time in ns) has its
        own strictly increasing seq, so a restarted agent (a new incarnation) is accepted at once
        whatever its seq, and two replicas (two live incarnations) both count. A report is stale
        when its seq is not above its incarnation's last, or its incarnation is unknown and below
        the center's floor: a report from an incarnation older than one forgotten. A center keeps
        at most MAX_INCARNATIONS; to admit another, the least recently heard one silent for the
        stale time is forgotten and the floor rises above it; when all are live the newcomer is
        refused (a replay cannot push out a working agent). Returns the incarnation's record for
        the caller to update, or None with `self._stale` set.
        """
        inc = report.incarnation
        if heard is not None:
            self._stale = StaleReport(c.id, report.seq, int(heard[0]), inc)
            return None
        if inc < c.floor:
            self._stale = StaleReport(c.id, report.seq, 0, inc, f"older than incarnation {c.floor} of "
                                      f"center {c.id!r}, whose older incarnations are forgotten")
            return None
        if len(c.seqs) >= MAX_INCARNATIONS:
            silent = [(h[1], i) for i, h in c.seqs.items() if now - h[1] > self._stale_after_s]
            if not silent:
                self._stale = StaleReport(c.id, report.seq, 0, inc, f"center {c.id!r} already has "
                                          f"{MAX_INCARNATIONS} live incarnations")
                return None
            self._forget(c, min(silent)[1])
            if inc < c.floor:  # forgetting raised the floor above it: it is older still
                self._stale = StaleReport(c.id, report.seq, 0, inc, f"older than incarnation {c.floor} "
                                          f"of center {c.id!r}, whose older incarnations are forgotten")
                return None
        heard = c.seqs[inc] = [-1, now]
        return heard

    @staticmethod
    def _forget(c: _Center, inc: int) -> None:
        del c.seqs[inc]
        c.floor = max(c.floor, inc + 1)

    # ------------------------------------------------------------------ internals

    def _center(self, field: str, cid: str) -> _Center:
        c = self._centers.get(cid)
        if c is None:
            raise InvalidInput(field, cid, "unknown center")
        return c

    def _clamp(self, now: float) -> float:
        # a caller may compute `now` before an await and pass it after a later one: time never runs
        # backwards here, so an older `now` is read as the latest one seen
        now = _finite("now", now)
        return self._now if self._now > now else now  # max(now, self._now), as max() picks it

    def _deadlines(self, c: _Center) -> tuple[float, float, str]:
        """(stale from, DOWN at, why DOWN) for a center that has reported and is not latched DOWN."""
        assert c.last_report_at is not None
        s = self._s
        stale_at = c.last_report_at + self._stale_after_s
        down_at = c.last_report_at + s.down_after_s
        why = self._why_silent
        if c.closed_at is not None:
            stale_at = min(stale_at, c.closed_at)
            if c.closed_at + s.stream_grace_s < down_at:
                down_at = c.closed_at + s.stream_grace_s
                why = self._why_closed
        if c.vouched_until > down_at:
            down_at = c.vouched_until
        return stale_at, down_at, why

    def _next_change(self, c: _Center, now: float) -> float:
        """The earliest time after `now` at which `now` alone could change the center's status or a
        latch of _advance (inf: none); its record changing is what _touch is for."""
        best = math.inf if c.fail_until is None else c.fail_until
        if c.down_since is not None:
            return best
        last = c.last_report_at
        if last is None:
            return min(best, max(self._start, c.added_at) + self._down_after_s)
        if c.closed_at is None and c.vouched_until == -math.inf:  # _deadlines(c), inline: the usual case
            stale_at = last + self._stale_after_s
            down_at = last + self._down_after_s
        else:
            stale_at, down_at, _ = self._deadlines(c)
        if now < stale_at < best:
            best = stale_at
        return down_at if down_at < best else best

    def _touch(self, c: _Center) -> None:
        """The center's record changed: the next _collect judges it whatever the time."""
        if not c.touched:
            c.touched = True
            self._touched.append(c)

    def _detect(self, c: _Center, now: float) -> _Failure | None:
        """The two F17 detectors over the center's last failing_window_intervals reports.

        Samples and _sent_to entries are in time order (`now` never runs backwards), so every "within
        the last so many seconds" below is a suffix: found from the newest end or by bisection, and
        summed as a difference of running totals. The sums are of integers: their order is free.
        """
        s = self._s
        if c.state != _OPEN:
            return None  # a draining or closed center refuses calls on purpose
        k = s.failing_window_intervals
        window = c.window
        n = len(window)
        # its own last k samples, first..last, if all are within the window's horizon (else too
        # little of its own evidence, e.g. just back from DOWN)
        if n < k:
            return None
        first, last = window[n - k], window[-1]
        horizon = now - self._window_horizon_s
        if first.at <= horizon:
            return None
        offered = last.offered_total - first.offered_total + first.offered
        answered = last.answered_total - first.answered_total + first.answered
        q0, q1 = first.queued, last.queued
        if (offered >= s.failing_min_calls and answered == 0 and q1 > q0
                and not all(window[i].saturated for i in range(n - k, n))):
            return _Failure(f"not answering (answered 0, queue rising {q0}->{q1})", 0.0)
        # Only since the receiver's reports last ran without a gap: calls sent while its reports
        # were lost (a partition) arrived in intervals nobody told us about.
        since = c.gap_since if c.gap_serial > c.evicted else _NEVER  # self._since_gap(c), inline
        # ... and only calls sent before the receiver's latest report: it has not yet had the chance
        # to report later ones (its reports may just have stopped: that is staleness, not loss)
        upto = last.at
        own_sent = last.kept_total - first.kept_total + first.kept
        sent_here = self._sent_to[c.id]
        # each other center's samples after the horizon, at most its last k ones
        others_sent = 0
        for at, o, serial, calls in reversed(sent_here):
            if at <= horizon or at < since:
                break
            if at <= upto and serial > o.samples - k:
                others_sent += calls
        sent = own_sent + others_sent
        if sent >= s.failing_min_calls and offered < s.failing_arrival_ratio * sent:
            return _Failure(f"calls routed here are not arriving (sent {sent}, offered {offered})", 1.0)
        # Per origin: a receiver's own calls can hide the loss of every call other centers send it
        # (2020-02-04: the main center took its own calls but none of Wuhan's overflow). What it
        # offered beyond its own agent's lookups is what arrived from elsewhere. The look-back
        # grows (3 intervals, then doubling) until other centers sent enough calls to judge.
        # Calls sent in the last interval may not have reached the receiver's ACD report yet (the
        # sender reports them at once, the receiver in its next interval): they are not judged.
        in_flight = now - s.interval_s
        if upto < in_flight:  # min(now - interval, upto), as min() picks it
            in_flight = upto
        slack = self._slack_s
        # The other centers' samples (still in their window) that sent calls here within the longest
        # look-back, in one newest-first walk for every step of the look-back (rescanning every
        # center's window per step was most of the simulator's time): the entries are in time order,
        # so when one is outside the current span, that span has all it will count and is judged
        # before widening. The walk stops at the first span with enough calls: wider ones are not tried.
        lo = now - self._longest_span_s - slack
        if not lo > since:  # max(since, lo), as max() picks it
            lo = since
        min_calls = s.failing_min_calls
        spans = self._look_back_spans
        widest = len(spans) - 1
        j = 0
        span = spans[0]
        horizon = now - span - slack  # a sample counts within `span` if after this
        others_sent = 0
        for at, o, serial, calls in reversed(sent_here):
            if at < lo:
                break
            if at <= in_flight and serial > o.evicted:
                if at <= horizon:
                    while at <= horizon and others_sent < min_calls and j < widest:
                        j += 1
                        span = spans[j]
                        horizon = now - span - slack
                    if at <= horizon:
                        break  # enough calls within span j, or this one is outside every span
                others_sent += calls
        if others_sent < min_calls:
            return None  # no look-back reaches enough calls to judge
        # its own samples after the horizon and since the gap
        start = max(bisect_right(c.times, horizon), bisect_left(c.times, since))
        from_others = 0
        if start < n:
            oldest = window[start]
            from_others = max(0, (last.offered_total - oldest.offered_total + oldest.offered)
                              - (last.kept_total - oldest.kept_total + oldest.kept))
        if from_others < s.failing_arrival_ratio * others_sent:
            return _Failure(f"calls routed here from other centers are not arriving (sent {others_sent}, "
                            f"arrived {from_others} in {span:g} s)", 1.0)
        return None

    @staticmethod
    def _since_gap(c: _Center) -> float:
        """When the run of reports after the latest gap in the window began (-inf: no gap in it)."""
        # the gap counts while its earlier sample is still in the window
        return c.gap_since if c.gap_serial > c.evicted else -math.inf

    def _judge(self, c: _Center, now: float) -> bool:
        """Run the detectors on a HEALTHY center; start its hold-down if one fires (then True)."""
        failure = self._detect(c, now)
        if failure is None:
            return False
        self._start_failing(c, failure, now, relapse=now < c.probation_until)
        return True

    def _start_failing(self, c: _Center, failure: _Failure, now: float, relapse: bool) -> None:
        s = self._s
        c.holddown_s = min(2 * c.holddown_s, s.failing_holddown_max_s) if relapse else s.failing_holddown_s
        c.fail, c.fail_since, c.fail_until = failure, now, now + c.holddown_s
        self._touch(c)

    def _evaluate(self, c: _Center, now: float) -> _Verdict:
        """The verdict on one center at `now` from its record; pure, so view() can use it."""
        s = self._s
        if c.down_since is not None:
            why = c.down_reason
            if c.streak:
                why = f"{why}; recovering ({c.streak}/{s.recover_intervals} fresh reports)"
            return _Verdict(Status.DOWN, 0.0, why, c.down_since)
        if c.last_report_at is None:
            start = max(self._start, c.added_at)
            t = start + s.down_after_s
            if now >= t:
                return _Verdict(Status.DOWN, 0.0, f"no report within {s.down_after_s:g} s of start", t)
            return _Verdict(Status.UNKNOWN, 1.0, "no report yet", start)
        if c.closed_at is None and c.vouched_until == -math.inf:  # _deadlines(c), inline: the usual case
            stale_at = c.last_report_at + self._stale_after_s
            down_at = c.last_report_at + self._down_after_s
            down_why = self._why_silent
        else:
            stale_at, down_at, down_why = self._deadlines(c)
        if now >= down_at:
            return _Verdict(Status.DOWN, 0.0, down_why, down_at)
        # the failing verdict in force at `now`, judging a hold-down that ended without mutating
        if c.fail_until is None:
            failure = None
        elif now < c.fail_until:
            failure = c.fail
        else:
            failure = self._detect(c, now)
        if now >= stale_at:
            weight = min(1.0, max(0.0, (down_at - now) / (down_at - stale_at)))
            why = "report stream closed" if c.closed_at is not None else \
                f"no report for {now - c.last_report_at:.1f} s"
            if now < c.vouched_until:
                weight = 1.0  # alive by its peers' word: its routes stay as they were
                why = f"{why}; link cut: peers reach it"
            if failure is not None:
                weight = min(weight, failure.weight)
                why = f"{why}; {failure.reason}"
            return _Verdict(Status.STALE, weight, why, stale_at)
        if failure is not None:
            return _Verdict(Status.FAILING, failure.weight, failure.reason, c.fail_since)
        why = "reporting"
        if now < c.probation_until:
            why = f"reporting; on probation until {c.probation_until:g}"
        return _Verdict(Status.HEALTHY, 1.0, why, now)

    def _advance(self, now: float) -> list[HealthChange]:
        """Latch what timed out by `now`: DOWN, and the end of failing hold-downs."""
        self._now = now
        changes, self._pending = self._pending, []
        if now >= self._due:
            self._latch(now, changes)
        return changes

    def _latch(self, now: float, changes: list[HealthChange]) -> None:
        """_advance once a deadline has passed: judge every center, adding the DOWN changes to `changes`."""
        for c in self._centers.values():
            if c.fail_until is not None and now >= c.fail_until:
                relapse = self._detect(c, now)
                if relapse is not None:
                    # still failing on fresh evidence after the hold-down: a relapse, hold longer
                    self._start_failing(c, relapse, now, relapse=True)
                else:
                    c.probation_until = c.fail_until + self._s.failing_probation_s
                    c.fail, c.fail_until = None, None
                    self._touch(c)
            if c.down_since is None:
                v = self._evaluate(c, now)
                if v.status == Status.DOWN:
                    c.down_since, c.down_reason = v.since, v.reason
                    c.streak, c.streak_at = 0, -math.inf
                    changes.extend(self._emit(c, v))

    def _collect(self, now: float, judged: tuple[_Center, _Verdict] | None = None) -> list[HealthChange]:
        """The status changes as of `now`, in center order; judges only the centers that can have one.

        `judged`: a center and its verdict as of `now` that the caller already has (its record has not
        changed since), so it is not evaluated again.
        """
        touched, self._touched = self._touched, []
        for c in touched:
            c.touched = False
        changes: list[HealthChange] = []
        if now >= self._due:
            for c in self._centers.values():
                v = judged[1] if judged is not None and c is judged[0] else self._evaluate(c, now)
                changes.extend(self._emit(c, v))
            dues = self._dues = [self._next_change(c, now) for c in self._centers.values()]
            self._due = min(dues, default=math.inf)
            return changes
        if not touched:
            return changes
        if len(touched) > 1:
            touched.sort(key=_position)
        dues = self._dues
        for c in touched:
            v = judged[1] if judged is not None and c is judged[0] else self._evaluate(c, now)
            if v.status != c.status:
                changes.extend(self._emit(c, v))
            dues[c.position] = self._next_change(c, now)
        self._due = min(dues)
        return changes

    def _emit(self, c: _Center, v: _Verdict) -> list[HealthChange]:
        if v.status == c.status:
            return []
        why = v.reason
        if v.status == Status.HEALTHY:
            # say what ended the previous status: that is what an operator reading the log asks
            why = {
                Status.UNKNOWN: "first report",
                Status.DOWN: f"recovered: {self._s.recover_intervals} consecutive fresh reports",
                Status.STALE: "reports fresh again",
                Status.FAILING: "failing hold-down over, detectors quiet",
            }.get(c.status, why)
            if self._now < c.probation_until:
                why = f"{why}; on probation until {c.probation_until:g}"
        change = HealthChange(c.id, c.status, v.status, min(v.since, self._now), why)
        c.status = v.status
        return [change]


def _position(c: _Center) -> int:
    return c.position


def _finite(field: str, v: float) -> float:
    if type(v) is float and math.isfinite(v):
        return v  # the usual case, as below: float(v) of a float is v
    if not isinstance(v, int | float) or not math.isfinite(v):
        raise InvalidInput(field, v, "must be a finite number of monotonic seconds")
    return float(v)
