"""DR path probes in the simulator (issue 16, F21): when each sender's agent finds a broken path into a
receiving center, and when it finds it healed.

The real agent (agents.probe.PathProber) probes the call entry of every peer about every
`path_probe_interval_s`, jittered x U(0.8, 1.2), from a random phase; a path is broken after a failed
probe and its immediate retry, healed at the first success, and a change sends a report at once.
Simulating every probe would be ~70 events a second for 9 centers; instead, for each scenario
PathBreak, each sender draws when its probe loop first looks after the change:

    found broken at  t_break + U(0, 1.2 x interval) + 2 x probe_timeout + DELIVERY_S
    found healed at  t_mend  + U(0, 1.2 x interval) + DELIVERY_S

U(0, 1.2 x interval) bounds the wait for the loop's next probe (its mean, ~0.6 s, is above the
renewal process's ~0.51 s), and two full timeouts are the slow way a failure shows (a black-holed
link); the engine's broken path is an entry that does not take calls, which the real agent hears
as a 503 in milliseconds. Both err towards finding the break later, not sooner.

Who finds it, and under which key: every center's agent but the receiver's own probes it (the
engine's broken path loses calls from every other center's branches). A sender whose building is
dark (closed) at the change runs no probes and sends no reports, so it finds nothing; the
control plane keeps whatever that sender last reported (PathBook is only updated by the sender's
own reports), as the real one does. The control plane applies a sender's broken paths to the
routes whose `home` is that sender (controlplane.core.paths.apply_broken_paths); a dark center's
routes, which no sender's own probes cover, lose a receiver that more than half of the open
centers find broken (the receiver's entry, broken for everyone: the 2020-02-04 failure).

Must not: read the clock or use unseeded randomness (each draw is seeded by the call set, the
pair and the change time, so a run is the same in any process and any order).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import xxhash

from .engine import Closure, PathBreak, ScenarioEvent, Simulation

# agents/settings.py AgentSettings defaults, mirrored so the simulator does not import the agent
# (tests/test_sim_probe.py checks they stay equal)
PATH_PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 0.3
# the agent's prober jitters each interval by x U(0.8, 1.2) (agents/probe.py)
PROBE_JITTER_MAX = 1.2
# the changed report's trip to the control plane, its urgent publish and the plan's push to the
# agents: a LAN/WAN round trip or two; the sim's 0.5 s report ticks are not waited for
DELIVERY_S = 0.1


def open_at(events: Sequence[ScenarioEvent], center: str, t: float) -> bool:
    """Whether `center`'s building is open at `t` under the scenario's closures."""
    return not any(isinstance(ev, Closure) and ev.center == center and ev.at_s <= t < ev.until_s
                   for ev in events)


class PathProbes:
    """The (time, sender, receiver, broken?) findings of every sender's probes, in time order, and
    each sender's set of broken receivers as it last reported it."""

    def __init__(self, sim: Simulation, *, interval_s: float = PATH_PROBE_INTERVAL_S,
                 timeout_s: float = PROBE_TIMEOUT_S, delivery_s: float = DELIVERY_S) -> None:
        for name, v in (("interval_s", interval_s), ("timeout_s", timeout_s), ("delivery_s", delivery_s)):
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {v!r}")
        # the seed follows the call set's draw (its first arrivals): another seed, other phases
        base = xxhash.xxh64_intdigest(sim.calls.arrival[:32].tobytes())
        findings: list[tuple[float, str, str, bool]] = []
        for ev in sim.events:
            if not isinstance(ev, PathBreak):
                continue
            for sender in sim.centers:
                if sender == ev.center:
                    continue  # an agent does not probe its own center's entry
                for t0, broken in ((ev.at_s, True), (ev.until_s, False)):
                    if not math.isfinite(t0):
                        continue
                    if not open_at(sim.events, sender, t0):
                        continue  # dark: no probes, no reports
                    pair = f"{sender}>{ev.center}@{t0!r}".encode()
                    rng = random.Random(base ^ xxhash.xxh64_intdigest(pair))
                    t = t0 + rng.uniform(0.0, PROBE_JITTER_MAX * interval_s) + delivery_s
                    if broken:
                        t += 2 * timeout_s
                    findings.append((t, sender, ev.center, broken))
        findings.sort()
        self.findings = findings
        self._next = 0
        self.broken: dict[str, dict[str, str]] = {}
        self.log: list[tuple[float, str, str, bool]] = []  # findings reported, for the summary

    def next_at(self) -> float:
        return self.findings[self._next][0] if self._next < len(self.findings) else math.inf

    def advance(self, now: float) -> list[tuple[float, str, dict[str, str]]]:
        """Findings due by `now`: (when, sender, its whole broken set) per report they send."""
        out: list[tuple[float, str, dict[str, str]]] = []
        while self._next < len(self.findings) and self.findings[self._next][0] <= now:
            t, sender, receiver, broken = self.findings[self._next]
            self._next += 1
            cur = self.broken.setdefault(sender, {})
            if broken:
                cur[receiver] = "entry not accepting calls"
            else:
                cur.pop(receiver, None)
            self.log.append((t, sender, receiver, broken))
            out.append((t, sender, dict(cur)))
        return out
