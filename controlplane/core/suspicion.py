"""Indirect probes of a silent center and the panic threshold (issue #16, rows F18-F20): pure rules.

When a center's reports stop, the control plane cannot tell a dead center (F18) from a cut link
between itself and the center (F19). It asks K other centers' agents to probe the silent agent (the
indirect probe of SWIM / memberlist) and reads their answers here:
  - every asked peer that answered says "unreachable", and at least `needed` did  -> DOWN now
  - some peer reached it after the center went silent                             -> link cut: keep
    its routes (stale), no DR
  - otherwise                                                                     -> undecided: the
    tracker's down_after_s still applies
And when more than `panic_share` of all centers are silent together (F20), the control plane suspects
its own network, not the centers: it freezes the plan instead of sending everyone to DR (Envoy's panic
threshold). Pure: time comes in as `now`; no clock, I/O or asyncio.
"""

from __future__ import annotations

import math

import msgspec

from controlplane.core.model import InvalidInput

DOWN = "down"
LINK_CUT = "link_cut"
UNDECIDED = "undecided"


class SuspicionSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Indirect-probe and panic settings; every default says why it is that number."""

    # one missed 0.5 s report and half an interval of jitter: suspecting early costs only probes
    # (nothing moves until peers confirm: a late but live center answers them), and every 0.25 s
    # here is 0.25 s of F18's 2 s budget. Measured on national.yaml at load 8 on 2 cores, 20 SIGSTOP
    # trials: 1.0 s gave p50 1.99 s, p99 2.30 s
    suspect_after_s: float = 0.75
    # peers asked per silent center: 3 is memberlist's indirect-checks default; one peer's own bad
    # link cannot declare a center dead, and more adds probes without changing the verdict
    probe_k: int = 3
    # an agent's health answer on a LAN/WAN comes in tens of ms; 0.3 s is ten times that and still
    # leaves the probe round (request on an ack, probe, early report) well inside the 2 s budget
    probe_timeout_s: float = 0.3
    # while a center stays silent its probes are repeated this often, so a link cut that becomes a
    # dead center is still found fast; one report interval keeps it to a probe per peer per report
    probe_interval_s: float = 0.5
    # a "reachable" answer holds the center out of DOWN for this long: two probe rounds, so one lost
    # answer does not turn a cut link into DR
    reachable_hold_s: float = 1.0
    # more than half the centers silent together is the control plane's own network (Envoy panics
    # below 50% healthy): freeze the plan and alert instead of moving the country to DR
    panic_share: float = 0.5

    def __post_init__(self) -> None:
        for name in ("suspect_after_s", "probe_timeout_s", "probe_interval_s", "reachable_hold_s"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not math.isfinite(v) or not 0 < v <= 3600:
                raise InvalidInput(name, v, "must be a number in (0, 3600] seconds")
        if not isinstance(self.probe_k, int) or not 1 <= self.probe_k <= 100:
            raise InvalidInput("probe_k", self.probe_k, "must be an integer in [1, 100]")
        s = self.panic_share
        if not isinstance(s, int | float) or not math.isfinite(s) or not 0 < s < 1:
            raise InvalidInput("panic_share", s, "must be a number in (0, 1)")


def choose_probers(target: str, fresh: list[str], k: int) -> list[str]:
    """Up to k reporting centers to probe `target`: the ones after it in `fresh`'s order (wrapping),
    so each silent center gets its own peers and no one peer probes everyone."""
    others = [c for c in fresh if c != target]
    if not others:
        return []
    start = sum(target.encode()) % len(others)
    return [others[(start + i) % len(others)] for i in range(min(k, len(others)))]


def verdict(answers: dict[str, tuple[bool, float]], needed: int, silent_since: float,
            now: float, s: SuspicionSettings) -> str:
    """DOWN, LINK_CUT or UNDECIDED for a silent center from its peers' answers.

    answers: prober -> (reachable, when the answer arrived), the latest per prober; only answers
    after `silent_since` count. DOWN needs `needed` (>= 1) distinct peers that failed to reach it:
    probers change between rounds (the ones reporting soonest are asked), so it counts peers, not
    one round's list.
    """
    recent = [a for a in answers.values() if a[1] >= silent_since]
    if any(ok and now - at <= s.reachable_hold_s for ok, at in recent):
        return LINK_CUT
    if needed >= 1 and sum(1 for ok, _ in recent if not ok) >= needed:
        return DOWN
    return UNDECIDED


def panicking(silent: int, total: int, s: SuspicionSettings) -> bool:
    """More than panic_share of the centers silent at once: suspect our own network (F20)."""
    if total <= 0:
        return False
    return silent > s.panic_share * total


class Round(msgspec.Struct):
    """The probing of one silent center: since when it is silent, who was asked last and when."""

    since: float
    asked: list[str]
    asked_at: float


class Step(msgspec.Struct, frozen=True):
    """What one `Suspicion.step` decided, as values for the brain to apply."""

    # centers every needed peer failed to reach: DOWN now, with why
    down: list[tuple[str, str]]
    # silent centers held out of DOWN until the time given (peers reach them, or we panic)
    hold: dict[str, float]
    panic: bool


class Suspicion:
    """The indirect-probe state machine of the leader's brain (issue 16), pure like the tracker.

    Fed with the tracker's silent centers (`step`) and with probers' answers (`answer`), it asks
    probers for probes (`take_requests`, carried on the prober's next ReportAck) and returns its
    verdicts as values. Nothing here reads a clock: `now` comes in.
    """

    def __init__(self, settings: SuspicionSettings) -> None:
        self.s = settings
        self.rounds: dict[str, Round] = {}
        # target -> prober -> (reachable, when the answer arrived); the latest per prober
        self.answers: dict[str, dict[str, tuple[bool, float]]] = {}
        # prober -> targets to ask of it on its next ack
        self.outbox: dict[str, list[str]] = {}
        self.panic = False
        self.requests_sent = 0

    def step(self, now: float, silent: dict[str, float], fresh: list[str], total: int) -> Step:
        """Judge the silent centers at `now`. `fresh`: the reporting centers that can probe, the one
        whose next report is due soonest first (its ack carries the request soonest); `total`: all
        centers of the topology (the panic share's base)."""
        s = self.s
        for gone in [t for t in self.rounds if t not in silent]:
            del self.rounds[gone]
            self.answers.pop(gone, None)
        self.panic = panicking(len(silent), total, s)
        if self.panic:
            # our own network, most likely: nobody goes DOWN on evidence we cannot trust, and the
            # plan stays as it is until the centers are heard again or an operator acts
            return Step([], {t: now + s.reachable_hold_s for t in silent}, True)
        down: list[tuple[str, str]] = []
        hold: dict[str, float] = {}
        for target, since in silent.items():
            r = self.rounds.get(target)
            if r is None or r.since != since:
                r = self.rounds[target] = Round(since, [], -math.inf)
                self.answers.pop(target, None)
            if now - r.asked_at >= s.probe_interval_s:
                r.asked = choose_probers(target, fresh, s.probe_k)
                r.asked_at = now
                for p in r.asked:
                    waiting = self.outbox.setdefault(p, [])
                    if target not in waiting:
                        waiting.append(target)
            needed = min(s.probe_k, len([c for c in fresh if c != target]))
            answers = self.answers.get(target, {})
            v = verdict(answers, needed, since, now, s)
            if v == DOWN:
                down.append((target, f"silent, and {needed} peers could not reach it"))
            elif v == LINK_CUT:
                at = max(a[1] for a in answers.values() if a[0])
                hold[target] = at + s.reachable_hold_s
        for target, _ in down:
            self.rounds.pop(target, None)
            self.answers.pop(target, None)
        return Step(down, hold, False)

    def answer(self, prober: str, probes: dict[str, bool], now: float) -> None:
        """A prober's report carried its probe answers: kept for the targets still being probed."""
        for target, ok in probes.items():
            if target in self.rounds:
                self.answers.setdefault(target, {})[prober] = (ok, now)

    def take_requests(self, prober: str) -> list[str]:
        """The targets to ask `prober` to probe, once: its ack carries them."""
        got = self.outbox.pop(prober, None)
        if got:
            self.requests_sent += len(got)
            return got
        return []

    def next_round_at(self) -> float:
        """When `step` next has a round to start (inf: no silent center being probed)."""
        return min((r.asked_at + self.s.probe_interval_s for r in self.rounds.values()), default=math.inf)
