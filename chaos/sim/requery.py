"""The callroute policy with per-call re-query (post-routing, issue 17): `callroute+requery`.

Everything `CallroutePolicy` does, and a call still waiting `RequeryPolicy.after_s` at its center
is re-queried: its switch sends the call's id, the seconds it waited there, the centers it has
tried and the re-queries used, and the agent answers from the plan in force with the real core
(`controlplane.core.requery.RequeryBook`, the same code the agent's /v1/requery runs). A named
center gets the call at the back of its queue; "stay" leaves it where it waits. Up to
`max_per_call` re-queries, each `after_s` after the last (the switch's ring timer restarts at the
new center).

Look-ahead (`policy.requery.look_ahead` > 0): every answer also names centers to offer the call
to first; each receiving center answers with the core's `LookAheadDesk` on its ACD's gauges as last
pushed (the sim's queues sampled every report interval, as the agent's ACD push holds them), and
the first to accept takes the call at the back of its queue (an agent was free when it accepted;
another call may take that agent first, as on a real ACD). The call is re-queried every
`every_s` while it waits, up to `max_per_call`; refused offers cost it nothing.

The plan's receivers' predictions (with each one's live queue) are what the answer ranks centers
by, so this policy's planner predicts (`predict=True`; `callroute` leaves them out). Each center's
agent keeps its own `RequerySends` (the calls it re-queried lately), as the real agents do: a
switch asks the agent of its branch's home center, or the backup agent while that one is dark.
Reported under its own name, never as `callroute`. The policy is the topology's `policy.requery` unless given.
Must not: see anything the switch and agent would not (the sim's queues are only in the reports).
"""

from __future__ import annotations

import math

from controlplane.core.lookahead import LookAheadDesk
from controlplane.core.lookup import VIP_TIER
from controlplane.core.model import RequeryPolicy
from controlplane.core.requery import RequeryBook, RequeryQuery, RequerySends

from .engine import Simulation
from .policies import POLICY_FACTORIES, CallroutePolicy


class RequeryPolicySim(CallroutePolicy):
    """callroute + the switch's re-query of waiting calls, answered by the core's RequeryBook."""

    name = "callroute+requery"
    predict = True

    def __init__(self, *, requery: RequeryPolicy | None = None, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.name = "callroute+requery"
        self._given = requery

    def start(self, sim: Simulation) -> None:
        self.rq = self._given or sim.topology.policy.requery
        # the engine offers a waiting call to requeue() this long after it arrived (callroute
        # routes at once: arrival is when it joins its first queue); max_per_call 0 = never;
        # with look-ahead the first re-query comes every_s after the call starts waiting
        first = (self.rq.every_s or self.rq.after_s) if self.rq.look_ahead else self.rq.after_s
        self.requeue_after_s = first if self.rq.max_per_call > 0 else None
        # each center's look-ahead desk and its ACD's gauges as last pushed: (ready, queued) per
        # skill, sampled every report interval (tick)
        # an accept is held until the ACD's next push shows its agent busy: the sim's transfer is
        # instant, so that is one report interval (the agent's default, HOLD_S, adds the transfer)
        self.desks = [LookAheadDesk(hold_s=self.tick_s or 0.5) for _ in sim.centers]
        self.gauges: list[list[tuple[int, int]]] = [[(0, 0)] * len(sim.skills) for _ in sim.centers]
        self.offers = self.offers_taken = 0
        # per call: (centers tried, re-queries used, when it joined the queue it waits in): the
        # switch's own record of its call, as a real switch keeps it in the call's state
        self.calls: dict[int, tuple[tuple[str, ...], int, float]] = {}
        self.book: RequeryBook | None = None
        # per agent (center index): the calls it re-queried lately
        self.sends = [RequerySends() for _ in sim.centers]
        self.requeries = self.moves = 0
        super().start(sim)

    def requeue(self, sim: Simulation, call: int, now: float) -> int:
        plan = self.last_plan
        if plan is None:
            return -1
        cur = sim.call_center[call]
        tried, used, joined = self.calls.get(call, ((sim.centers[cur],), 0, sim.arrival[call]))
        if used >= self.rq.max_per_call:
            return -1
        if self.book is None or self.book.plan is not plan:
            self.book = RequeryBook(plan, sim.topology.policy.service_level.answer_within_s)
        q = RequeryQuery(call_id=str(call), branch=sim.branches[sim.call_branch[call]],
                         skill=sim.skills[sim.call_skill[call]], waited_s=max(0.0, now - joined),
                         tried=tried, count=used, caller=str(sim.caller[call]),
                         tier=VIP_TIER if sim.vip is not None and sim.vip[call] else "")
        # the switch asks its own agent: the branch's home center's, or the backup while it is dark
        home = sim.branch_home[sim.call_branch[call]]
        agent = home if sim.center_open[home] else self._backup_agent(sim, home)
        a = self.book.answer(q, self.rq, self.sends[agent], now)
        self.requeries += 1
        si = sim.call_skill[call]
        for c in a.offers:
            oi = sim.center_index.get(c, -1)
            if oi < 0 or not sim.center_open[oi]:
                continue  # the trunk to a dark center fails: no offer is made
            self.offers += 1
            ready, queued = self.gauges[oi][si]
            if self.desks[oi].offer(sim.skills[si], ready, queued, now, self.rq.reserve).accept:
                self.offers_taken += 1
                self.moves += 1
                # the switch's record: the taking center ends the tried list (once: a center tried
                # before may take the call back)
                self.calls[call] = ((*(t for t in tried if t != c), c), used + 1, now)
                return oi
        dest = sim.center_index.get(a.center, -1) if not a.stay else -1
        if dest >= 0 and not sim.center_open[dest]:
            dest = -1  # the trunk to a dark center fails: the call stays where it waits
        if dest >= 0:
            self.moves += 1
            self.calls[call] = ((*tried, a.center), used + 1, now)
        else:
            self.calls[call] = (tried, used + 1, joined)
        return dest

    def tick(self, sim: Simulation, now: float) -> None:
        super().tick(sim, now)
        if not self.rq.look_ahead:
            return
        for ci in range(len(sim.centers)):
            row = self.gauges[ci]
            for si in range(len(sim.skills)):
                q = sim.queue(ci, si)
                n, busy = sim.agents(q)
                row[si] = (max(0, n - busy), q.waiting)

    def requeue_again(self, call: int, now: float) -> float | None:
        """When the switch re-queries this call next, if it may: the answer's `again_s` (the ring
        timer restarts now, at the new center or, stay, at the same one)."""
        st = self.calls.get(call)
        if st is None or st[1] >= self.rq.max_per_call:
            return None
        t = now + (self.rq.every_s or self.rq.after_s)
        return t if math.isfinite(t) else None

    def summary(self) -> dict[str, object]:
        out = super().summary()
        out.update({"requeries": self.requeries, "requery_moves": self.moves,
                    "look_ahead_offers": self.offers, "look_ahead_taken": self.offers_taken,
                    "requery_policy": {"after_s": self.rq.after_s, "max_per_call": self.rq.max_per_call,
                                       "head_office": self.rq.head_office, "min_gain": self.rq.min_gain,
                                       "look_ahead": self.rq.look_ahead, "every_s": self.rq.every_s,
                                       "max_moves": self.rq.max_moves}})
        return out


POLICY_FACTORIES["callroute+requery"] = RequeryPolicySim
