"""Per-call re-query (post-routing, issue 17): where should a call that is already waiting go now?

A switch asks again when its call has waited `RequeryPolicy.after_s` at a center (or was refused
there): Cisco's post-routing, Avaya's look-ahead interflow and ICBC's "three rings, then head
office". The query carries the call's id, the seconds it waited and the centers it has tried (the
one it waits at last); the answer names the best other center now, or says to stay.

Stateless by design: the switch sends how many re-queries it has used (`count`) and the answer is
"stay" once that reaches `max_per_call`, so a client can make the agent hold nothing per call.

The best center now comes from the plan in force: the route's targets and every center the plan
predicts a service level for (`Plan.receivers`) for the call's skill, less the centers tried and
those the plan closes. With a head office in the policy the call goes there (the bank's rule),
while the plan has it open and staffed for the skill; otherwise it moves when the best predicted
center beats staying by `min_gain` of predicted service level (a move puts the call at the back
of another queue). Calls that wait in one plan's time spread by call id over the few centers
nearly as good as the best, by predicted spare agents, rather than all joining one queue.
Pinned (specialty) routes never move: that business stays local.
A plan without predictions (the planner's `predict=False`) ranks the route's targets by weight.

What a moved call meets is the receiver's queue now, not the plan's average: centers are ranked by
the service level predicted with each one's live queue counted as load (`backlog_erlangs`, from the
reports the plan was made from) and, when the agent passes its `RequerySends`, the calls it has
itself re-queried there lately (the plan counts a moved call at the center it first went to, so
its predictions never see re-query's own traffic arrive). The plan's `service_level`, what
operators read, is left as the planner made it. A plan without those fields (an older control
plane) ranks by `service_level` alone.

Pure: no clock (the wait comes in the query, `now` for RequerySends from the shell), no I/O.
Must not: hold per-call state (RequerySends holds counts per center and skill, never per call).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec
import xxhash

from .erlang import service_level
from .model import (
    VIP_TIER,
    CallPriority,
    InvalidInput,
    Plan,
    ReceiverPrediction,
    RequeryPolicy,
    Route,
    RouteKind,
    call_priority,
    check_id,
)

__all__ = ["RequeryQuery", "RequeryAnswer", "RequeryBook", "RequerySends", "check_query", "check_call_id",
           "MAX_TRIED",
           "MAX_CALL_ID_LEN", "MAX_COUNT", "MAX_WAITED_S", "SENT_TAU_S"]

# Centers one call may list as tried: a route has at most 8 fallbacks (lookup.MAX_FALLBACKS) and a
# policy at most 8 re-queries; twice that is a broken or hostile switch.
MAX_TRIED = 16
# A call id is a SIP Call-ID or an ACD's call key: 128 printable characters as the caller key.
MAX_CALL_ID_LEN = 128
# re-queries a query may say were used: any policy's max (8) is far below; more is a broken switch
MAX_COUNT = 64
# a day: no caller waits longer
MAX_WAITED_S = 86_400.0
# The answer's reason goes into switch logs, like a route's (lookup.MAX_REASON_CHARS).
MAX_REASON_CHARS = 160
# Re-queried calls spread over at most this many centers whose predicted service level is within
# SPREAD_SL of the best (and beats staying): a plan's overflow spreads over 4 receivers too.
SPREAD_CENTERS = 4
SPREAD_SL = 0.05
_xxh64 = xxhash.xxh64_intdigest
# The calls an agent re-queried to a center count as load there for about this long, decaying
# (exponentially, this time constant): a stream of r calls a second then counts r x tau calls, and
# r x tau x AHT / tau = r x AHT Erlangs is the load it adds. The planner's queue horizon
# (planner.QUEUE_HORIZON_S), so a sent call weighs what a queued one does in `backlog_erlangs`.
SENT_TAU_S = 60.0
# A look-ahead ranking (core of every answer while calls wait) is reused for this long while the
# agent's sends are unchanged: the receivers' decayed counts move by under 2% (tau 60 s) meanwhile
RANK_REUSE_S = 1.0
# rankings a book keeps (per sends object and skill) before it starts afresh: one agent's sends
# times a plan's skills in practice; a bound, not a working size
MAX_RANKINGS = 256
# the threshold of the service level re-query ranks by when the shell does not give the
# topology's (policy.service_level.answer_within_s defaults to it)
DEFAULT_ANSWER_WITHIN_S = 20.0
# centers and skills RequerySends keeps: a plan names at most this many pairs in practice (64
# centers x 16 skills); past it the oldest counts are dropped rather than growing without bound
MAX_SENT_KEYS = 1024


# a ranked center: (sort key, center, SL and load a moved call meets there, agents)
_Ranked = tuple[tuple[float, float, str], str, float, float, int]


class RequeryQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One re-query from a switch."""

    call_id: str
    branch: str
    skill: str
    waited_s: float
    # centers the call has been sent to, in order; the last is where it waits now
    tried: tuple[str, ...] = ()
    # re-queries this call has used before this one
    count: int = 0
    caller: str = ""
    tier: str = ""
    # the center refused the call (busy, 486/503): re-query at once, whatever the wait
    refused: bool = False


class RequeryAnswer(msgspec.Struct, frozen=True):
    """Move to `center`, or stay (`center` empty, `stay` true) where the call waits."""

    center: str
    stay: bool
    reason: str
    plan_version: int
    # re-queries the call has used including this one, and how many it has left
    count: int
    left: int
    # look-ahead (policy.look_ahead): centers to offer the call to first, in order, while it waits
    # where it is; the first that accepts (an agent free now) takes it, and only if none does is
    # `center`/`stay` followed
    offers: tuple[str, ...] = ()
    # seconds until the switch should re-query this call again; 0 = it has no re-query left
    again_s: float = 0.0
    # the queue priority the call carries to the center it is moved or offered to (CallPriority:
    # VIP callers stay VIP, others go as moved calls, ahead of that center's new ones); with stay
    # and no offers nothing changes where it waits (NORMAL, VIP for a VIP)
    priority: int = int(CallPriority.NORMAL)


def check_call_id(v: object) -> None:
    """A call id (re-query, look-ahead offer): 1..MAX_CALL_ID_LEN printable characters."""
    if not isinstance(v, str) or not v or len(v) > MAX_CALL_ID_LEN or not v.isprintable():
        raise InvalidInput("call_id", str(v)[:MAX_CALL_ID_LEN],
                           f"must be 1..{MAX_CALL_ID_LEN} printable characters")


def check_query(q: RequeryQuery) -> None:
    """Raise InvalidInput naming the first bad field and its value."""
    check_call_id(q.call_id)
    check_id("branch", q.branch)
    check_id("skill", q.skill)
    w = q.waited_s
    if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) \
            or not 0.0 <= w <= MAX_WAITED_S:
        raise InvalidInput("waited_s", w, f"must be a number of seconds in [0, {MAX_WAITED_S:g}]")
    if len(q.tried) > MAX_TRIED:
        raise InvalidInput("tried", len(q.tried), f"more than {MAX_TRIED} centers")
    seen: set[str] = set()
    for i, c in enumerate(q.tried):
        check_id(f"tried[{i}]", c)
        if c in seen:
            raise InvalidInput(f"tried[{i}]", c, "center listed twice")
        seen.add(c)
    n = q.count
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_COUNT:
        raise InvalidInput("count", n, f"must be an integer in [0, {MAX_COUNT}]")
    if not isinstance(q.caller, str) or len(q.caller) > MAX_CALL_ID_LEN or not q.caller.isprintable():
        raise InvalidInput("caller", str(q.caller)[:MAX_CALL_ID_LEN],
                           f"must be at most {MAX_CALL_ID_LEN} printable characters")
    if q.tier:
        check_id("tier", q.tier)


class RequerySends:
    """The calls one agent re-queried to each center and skill lately, as a count decaying with
    SENT_TAU_S. Kept by the agent across plans (a new plan's queues show only part of what was
    sent before it); time comes in as `now`, monotonic seconds."""

    __slots__ = ("_sent", "version")

    def __init__(self) -> None:
        # (center, skill) -> (decayed count at `at`, at)
        self._sent: dict[tuple[str, str], tuple[float, float]] = {}
        # bumped by every record: a ranking made from these counts is stale once it changes
        self.version = 0

    def record(self, center: str, skill: str, now: float) -> None:
        key = (center, skill)
        if key not in self._sent and len(self._sent) >= MAX_SENT_KEYS:
            oldest = min(self._sent, key=lambda k: self._sent[k][1])
            del self._sent[oldest]
        self._sent[key] = (self.calls(center, skill, now) + 1.0, now)
        self.version += 1

    def calls(self, center: str, skill: str, now: float) -> float:
        """The decayed count of calls sent to `center` for `skill`, at `now`."""
        got = self._sent.get((center, skill))
        if got is None:
            return 0.0
        n, at = got
        return n * math.exp(-max(0.0, now - at) / SENT_TAU_S)


class RequeryBook:
    """A plan's routes by (branch, skill), for re-queries. Immutable; build one per plan.
    `answer_within_s` is the service-level threshold centers are ranked at (the topology's)."""

    __slots__ = ("plan", "_routes", "_closed", "_t_s", "_ranked")

    def __init__(self, plan: Plan, answer_within_s: float = DEFAULT_ANSWER_WITHIN_S) -> None:
        self.plan = plan
        self._routes: dict[tuple[str, str], Route] = {(r.branch, r.skill): r for r in plan.routes}
        self._closed = frozenset(plan.closed)
        self._t_s = answer_within_s
        # look-ahead rankings per (sends object, skill): (sends version, time step, ranking)
        self._ranked: dict[tuple[RequerySends | None, str], tuple[int, int, list[_Ranked]]] = {}

    def _rank_sl(self, p: ReceiverPrediction, extra_calls: float) -> tuple[float, float]:
        """(service level, load in Erlangs) a call moved to this center meets now: the plan's load
        with the live queue and `extra_calls` sent lately counted; the plan's own figure when it
        carries no AHT (an older plan)."""
        if p.aht_s <= 0:
            return p.service_level, p.load_erlangs
        load = p.load_erlangs + p.backlog_erlangs + extra_calls * p.aht_s / SENT_TAU_S
        if load == p.load_erlangs:
            return p.service_level, load
        return service_level(p.agents, load, p.aht_s, self._t_s), load

    def answer(self, q: RequeryQuery, policy: RequeryPolicy, sends: RequerySends | None = None,
               now: float = 0.0) -> RequeryAnswer:
        """The decision for one checked query (see `check_query`); InvalidInput for an unknown
        branch or skill. With `sends` (the agent's), the calls it sent lately count at their
        receivers, and a move is recorded in it at `now`."""
        route = self._routes.get((q.branch, q.skill))
        if route is None:
            if not any(b == q.branch for b, _ in self._routes):
                raise InvalidInput("branch", q.branch,
                                   f"no route for this branch in plan {self.plan.version}")
            raise InvalidInput("skill", q.skill, f"no route for branch {q.branch!r} and this skill in "
                                                 f"plan {self.plan.version}")
        used = q.count + 1
        left = max(0, policy.max_per_call - used)
        vip = q.tier == VIP_TIER
        if q.count >= policy.max_per_call:
            return self._stay(f"stay: re-query limit reached ({policy.max_per_call} per call)", q.count, 0,
                              vip)
        if route.kind == RouteKind.PINNED:
            return self._stay("stay: pinned route (specialty business stays local)", used, left, vip)
        current = q.tried[-1] if q.tried else ""
        # look-ahead offers come at any wait: an offer moves the call only to an agent free now
        offers = self._offers(q, policy, sends, now) if policy.look_ahead > 0 else ()
        again = (policy.every_s or policy.after_s) if left > 0 else 0.0
        a = self._decide(q, policy, route, current, sends, now, used, left)
        return msgspec.structs.replace(a, offers=offers, again_s=again,
                                       priority=int(call_priority(vip, moved=bool(offers) or not a.stay)))

    def _offers(self, q: RequeryQuery, policy: RequeryPolicy, sends: RequerySends | None,
                now: float) -> tuple[str, ...]:
        """Up to `policy.look_ahead` centers to offer the call to, best first: every center the plan
        predicts staffed for the skill, open, other than where the call waits (a center tried
        before may have a free agent now). Calls waiting in one plan's time spread by call id over
        the centers within SPREAD_SL of the best, as moves do, so their offers find different free
        agents rather than all asking one center."""
        current = q.tried[-1] if q.tried else ""
        ranked = [r for r in self._ranking(q.skill, sends, now) if r[1] != current]
        out: list[str] = []
        for i in range(min(policy.look_ahead, len(ranked))):
            floor = ranked[0][2] - SPREAD_SL
            pool = [(c, max(n - load, 0.0)) for _, c, sl, load, n in ranked[:SPREAD_CENTERS] if sl >= floor]
            chosen = _spread(pool, f"{q.call_id}/{q.count}/{i}", ranked[0][1])
            out.append(chosen)
            ranked = [r for r in ranked if r[1] != chosen]
        return tuple(out)

    def _ranking(self, skill: str, sends: RequerySends | None,
                 now: float) -> list[_Ranked]:
        """Every open center the plan staffs for `skill`, best first (predicted SL with its live
        queue and the agent's sends counted). A switch re-queries each waiting call every second or
        so: the ranking is reused within RANK_REUSE_S while the sends are unchanged."""
        key = (sends, skill)
        step = int(now // RANK_REUSE_S) if math.isfinite(now) else 0
        version = sends.version if sends is not None else 0
        hit = self._ranked.get(key)
        if hit is not None and hit[0] == version and hit[1] == step:
            return hit[2]
        ranked = []
        for c, per_skill in self.plan.receivers.items():
            p = per_skill.get(skill)
            if p is None or p.agents <= 0 or c in self._closed:
                continue
            sl, load = self._rank_sl(p, sends.calls(c, skill, now) if sends is not None else 0.0)
            ranked.append(((-sl, load / p.agents, c), c, sl, load, p.agents))
        ranked.sort()
        if len(self._ranked) >= MAX_RANKINGS:
            self._ranked.clear()
        self._ranked[key] = (version, step, ranked)
        return ranked

    def _decide(self, q: RequeryQuery, policy: RequeryPolicy, route: Route, current: str,
                sends: RequerySends | None, now: float, used: int, left: int) -> RequeryAnswer:
        """Move to the back of another queue, or stay: the rule without look-ahead."""
        if not q.refused and q.waited_s < policy.after_s:
            return self._stay(f"stay: waited {q.waited_s:g} s, re-query after {policy.after_s:g} s",
                              used, left)
        if max(0, len(q.tried) - 1) >= policy.max_moves and current not in self._closed:
            return self._stay(f"stay: move limit reached ({policy.max_moves} per call)", used, left)
        tried = frozenset(q.tried)
        preds = self.plan.receivers
        skill = q.skill
        targets = route.vip_targets if q.tier == VIP_TIER and route.vip_targets else route.targets
        weight = {t.center: t.weight for t in targets if t.weight > 0}

        def usable(c: str) -> bool:
            return bool(c) and c not in tried and c not in self._closed

        def sent(c: str) -> float:
            return sends.calls(c, skill, now) if sends is not None else 0.0

        cur_pred = _pred(preds, current, skill)
        if not preds:
            # a plan without predictions: the head office, else the route's targets by weight
            if usable(policy.head_office):
                return self._move(policy.head_office, "head office", used, left)
            by_weight = sorted((c for c in weight if usable(c)), key=lambda c: (-weight[c], c))
            if by_weight:
                return self._move(by_weight[0], f"route target, weight {weight[by_weight[0]]:.0%}", used,
                                  left)
            return self._stay("stay: no untried target in the route", used, left)
        # what staying is worth: a center the plan closes or does not staff for the skill is nothing;
        # its live queue counts (the call waits in it), its own sends elsewhere do not
        stay_sl = self._rank_sl(cur_pred, 0.0)[0] if cur_pred is not None and current not in self._closed \
            else -1.0
        head = policy.head_office
        if usable(head):
            # the bank's rule (ICBC: three rings, then head office): the head office takes the call
            # whatever the prediction, as long as the plan has it open and staffed for the skill
            hp = _pred(preds, head, skill)
            if hp is not None and hp.agents > 0:
                return self._record(sends, skill, now, self._move(
                    head, f"head office, predicted SL {hp.service_level:.0%} vs {_sl_text(stay_sl)} here",
                    used, left))
        # (sort key, center, SL and load a moved call meets there, agents)
        ranked: list[tuple[tuple[float, float, bool, str], str, float, float, int]] = []
        for c, per_skill in preds.items():
            p = per_skill.get(skill)
            if p is None or p.agents <= 0 or not usable(c):
                continue
            sl, load = self._rank_sl(p, sent(c))
            # highest predicted SL; then least occupied; then the route's own targets; then by id
            ranked.append(((-sl, load / p.agents, c not in weight, c), c, sl, load, p.agents))
        if not ranked:
            return self._stay("stay: no other center staffs this skill", used, left)
        ranked.sort()
        best, best_sl = ranked[0][1], ranked[0][2]
        if best_sl < stay_sl + policy.min_gain:
            return self._stay(f"stay: best other {best} predicted SL {best_sl:.0%} "
                              f"vs {_sl_text(stay_sl)} here", used, left)
        # Every call waiting in one plan's time sees the same predictions: sending them all to the
        # one best center would pile them into its queue. They spread, by a stable hash of the call
        # id, over the few centers nearly as good, in proportion to each one's predicted spare agents.
        floor = max(stay_sl + policy.min_gain, best_sl - SPREAD_SL)
        pool = [(c, n - load) for _, c, sl, load, n in ranked[:SPREAD_CENTERS] if sl >= floor and n > load]
        chosen = _spread(pool, q.call_id, best)
        chosen_sl = next(sl for _, c, sl, _, _ in ranked if c == chosen)
        return self._record(sends, skill, now, self._move(
            chosen, f"best now, predicted SL {chosen_sl:.0%} vs {_sl_text(stay_sl)} here", used, left))

    @staticmethod
    def _record(sends: RequerySends | None, skill: str, now: float, a: RequeryAnswer) -> RequeryAnswer:
        if sends is not None and not a.stay:
            sends.record(a.center, skill, now)
        return a

    def _stay(self, why: str, used: int, left: int, vip: bool = False) -> RequeryAnswer:
        return RequeryAnswer("", True, why[:MAX_REASON_CHARS], self.plan.version, used, left,
                             priority=int(call_priority(vip)))

    def _move(self, center: str, why: str, used: int, left: int) -> RequeryAnswer:
        return RequeryAnswer(center, False, f"requery -> {center}: {why}"[:MAX_REASON_CHARS],
                             self.plan.version, used, left)


def _spread(pool: list[tuple[str, float]], key: str, default: str) -> str:
    """One of `pool`'s centers, chosen by a stable hash of `key` in proportion to each one's weight
    (spare agents); `default` when fewer than two have weight."""
    total = sum(w for _, w in pool)
    if len(pool) < 2 or total <= 0:
        return default
    x = _xxh64(key.encode()) / 2.0**64 * total
    for c, w in pool:
        x -= w
        if x < 0:
            return c
    return default


def _pred(preds: dict[str, dict[str, ReceiverPrediction]], center: str,
          skill: str) -> ReceiverPrediction | None:
    per = preds.get(center)
    return per.get(skill) if per is not None else None


def _sl_text(sl: float) -> str:
    return "none" if sl < 0 else f"{sl:.0%}"


def tried_from_text(text: str, field: str = "tried") -> tuple[str, ...]:
    """A comma-separated list of center ids (a switch's form), bounded before it is split."""
    if not text:
        return ()
    if len(text) > MAX_TRIED * 65:
        raise InvalidInput(field, text[:64], f"more than {MAX_TRIED} centers")
    parts: Sequence[str] = text.split(",")
    if len(parts) > MAX_TRIED:
        raise InvalidInput(field, len(parts), f"more than {MAX_TRIED} centers")
    return tuple(parts)
