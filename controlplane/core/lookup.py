"""The per-call route lookup: (branch, skill, caller, tier) -> the center that takes the call.

This is the hot path every telephony switch waits on. A published `Plan` is compiled once into a
`CompiledPlan`: each route's weighted targets become a shared `ring.Ring` table and every possible
answer (one per route and target) is built as a `Decision` up front. `resolve` then does only a
dict lookup, one stable hash of the caller, one table index and returns a prebuilt, immutable
Decision: no allocation, so shells may cache the encoded reply per Decision object.

The answer is a pure function of the plan and the caller: the same caller reaches the same center
for as long as the plan holds, in every process (xxhash, never Python's hash()).

A CompiledPlan is immutable; agents build the next one off the hot path and swap the reference.
Must not: do I/O, read the clock, or allocate per lookup beyond the hash.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NoReturn

import msgspec
import xxhash

from .model import VIP_TIER, InvalidInput, OverloadAction, Plan, Route, Target, Treatment
from .ring import MASK, SLOTS, CanonicalKey, Ring, RingCache, canonical_key, slot_owner

__all__ = ["Decision", "CompiledPlan", "LazyPlan", "RingCache", "resolve", "resolve_many", "VIP_TIER",
           "MAX_FALLBACKS", "MAX_REASON_CHARS"]


# A switch tries the chosen center and then a few fallbacks before the caller gives up; DR
# spreads over at most Policy.dr_receivers (8) centers. Capping keeps every reply small and the
# precomputed decisions O(targets) per route instead of O(targets**2).
MAX_FALLBACKS = 8

# The reason travels in every reply and into switch logs: enough for the kind and the planner's
# first words of why, short enough not to dominate the reply.
MAX_REASON_CHARS = 160

# Route answers remembered per RingCache (see _answer). A plan has a few hundred routes, each with
# a standard and maybe a VIP answer; this keeps several plans' worth (each entry well under 1 KiB:
# about 2 MiB at most on an agent) so routes that come back after a change hit again.
ANSWER_MEMO_SIZE = 2048

# A route without targets answers from this table: every slot -> its one overload decision.
_ALL_ZERO_TABLE = bytes(SLOTS)

_xxh64 = xxhash.xxh64_intdigest


class Decision(msgspec.Struct, frozen=True):
    """Where one call goes. Built at compile time; shared by every call that gets this answer."""

    center: str  # "" when no center can take the call: apply overload_action
    fallbacks: tuple[str, ...]  # the route's other targets, highest weight first
    plan_version: int
    reason: str  # route kind + short why
    overload_action: str = ""  # OverloadAction value; "" = none
    # the route's overload treatment chosen by predicted wait (issue 18); None = none
    treatment: Treatment | None = None


_Table = bytes | Sequence[int]
_Answer = tuple[_Table, tuple[Decision, ...]]
_Entry = tuple[_Answer, _Answer]  # (standard, vip); vip is standard when the route has no VIP set


_ACTIONS = frozenset(a.value for a in OverloadAction)


def _reason(route: Route, vip: bool, center: str, share: float, action: str) -> str:
    head = str(route.kind) + (" vip" if vip else "")
    if center:
        head = f"{head} -> {center} {share:.0%}"
    else:
        head = f"{head}: no target, {action or 'no action'}"
    why = route.explanation.split("\n", 1)[0]
    text = f"{head}; {why}" if why else head
    return text[:MAX_REASON_CHARS]


def _fallbacks(targets: Sequence[Target], center: str) -> tuple[str, ...]:
    live = sorted((t for t in targets if t.weight > 0 and t.center != center),
                  key=lambda t: (-t.weight, t.center))
    return tuple(t.center for t in live[:MAX_FALLBACKS])


# What a route's answer depends on besides the plan version: (vip, kind, overload action, first
# line of the explanation, targets) -> (canonical ring key, (fallbacks, reason) per ring target).
_MemoKey = tuple[bool, str, str, str, tuple[Target, ...]]
_Memo = tuple[CanonicalKey, tuple[tuple[tuple[str, ...], str], ...]]


def _memo_key(route: Route, vip: bool, targets: object, action: str) -> _MemoKey | None:
    """The memo key of an answer, or None when its targets are not a tuple of plainly typed Targets:
    equal targets then always pass or fail validation alike (True == 1.0 but a bool weight is
    refused), so a remembered answer never lets a target through that validation would refuse."""
    if type(targets) is not tuple or type(route.explanation) is not str:
        return None
    for t in targets:
        if type(t) is not Target:
            return None
        w = t.weight
        if type(t.center) is not str or (type(w) is not float and type(w) is not int):
            return None
    return (vip, str(route.kind), action, route.explanation.split("\n", 1)[0], targets)


def _answer(route: Route, vip: bool, version: int, cache: RingCache,
            index: int) -> tuple[_Answer, Ring | None]:
    key, decisions = _decisions(route, vip, version, cache, index)
    if not key:
        return (_ALL_ZERO_TABLE, decisions), None
    ring = cache.get_key(key)
    return (ring.table, decisions), ring


def _decisions(route: Route, vip: bool, version: int, cache: RingCache,
               index: int) -> tuple[CanonicalKey, tuple[Decision, ...]]:
    """A route's canonical ring key and its answers, one per key target in key order (the ring's
    `ids` order, so the table's slot values index them); one overload answer for an empty key."""
    key, parts, action = _route_parts(route, vip, cache, index)
    if not key:
        return key, (Decision("", (), version, parts[0][1], action, route.treatment),)
    return key, tuple([Decision(c, fb, version, why, action, route.treatment)
                       for (c, _), (fb, why) in zip(key, parts, strict=True)])


# per target of a route's canonical key (or the one overload answer): (fallbacks, reason)
_Parts = tuple[tuple[tuple[str, ...], str], ...]


def _route_parts(route: Route, vip: bool, cache: RingCache, index: int) -> tuple[CanonicalKey, _Parts, str]:
    """What a route's answers are made of besides the plan version: (ring key, parts, action)."""
    targets = route.vip_targets if vip else route.targets
    action = _checked_action(route, index)
    # Consecutive plans mostly repeat a route's targets and reason with a new version: reuse the
    # validated key, fallbacks and reasons (sorting and formatting were most of a compile).
    memo = cache.memo
    mkey = _memo_key(route, vip, targets, action)
    hit = memo.get(mkey) if mkey is not None else None
    if hit is not None:
        memo.move_to_end(mkey)
        return hit[0], hit[1], action
    key = _checked_key(targets, vip, index)
    total = sum(w for _, w in key)
    parts = tuple(_part(route, vip, targets, key, total, j, action) for j in range(max(1, len(key))))
    _remember(cache, mkey, (key, parts))
    return key, parts, action


def _checked_action(route: Route, index: int) -> str:
    # str() of the StrEnum is its value; a plain str from a hand-built Route passes through
    action = str(route.overload_action)
    if action not in _ACTIONS:
        raise InvalidInput(f"routes[{index}].overload_action", action, f"must be one of {sorted(_ACTIONS)}")
    return action


def _checked_key(targets: object, vip: bool, index: int) -> CanonicalKey:
    field = f"routes[{index}].vip_targets" if vip else f"routes[{index}].targets"
    if not isinstance(targets, tuple | list) or not all(isinstance(t, Target) for t in targets):
        raise InvalidInput(field, targets, "must be a sequence of Target")
    return canonical_key([(t.center, t.weight) for t in targets], field)


def _part(route: Route, vip: bool, targets: Sequence[Target], key: CanonicalKey, total: float, j: int,
          action: str) -> tuple[tuple[str, ...], str]:
    """(fallbacks, reason) of the answer for key target j; the one overload answer for an empty key."""
    if not key:
        # no targets (or none with weight): every caller gets the overload action
        return (), _reason(route, vip, "", 0.0, action)
    # the ring is built from the key's rounded weights (total is their sum): shares in the reasons
    # are the table's
    c, w = key[j]
    return _fallbacks(targets, c), _reason(route, vip, c, w / total, action)


def _remember(cache: RingCache, mkey: _MemoKey | None, value: _Memo) -> None:
    if mkey is None:
        return
    cache.memo[mkey] = value
    if len(cache.memo) > ANSWER_MEMO_SIZE:
        cache.memo.popitem(last=False)


class CompiledPlan:
    """A Plan ready for lookups. Immutable: build with `compile`, swap the reference to change."""

    __slots__ = ("version", "plan", "index", "_rings")

    version: int
    plan: Plan
    # branch -> skill -> (standard, vip) answers; nested dicts avoid building a tuple key per call
    index: dict[str, dict[str, _Entry]]
    _rings: dict[tuple[str, str, bool], Ring | None]

    def __init__(self, plan: Plan, index: dict[str, dict[str, _Entry]],
                 rings: dict[tuple[str, str, bool], Ring | None]) -> None:
        object.__setattr__(self, "version", plan.version)
        object.__setattr__(self, "plan", plan)
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "_rings", rings)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("CompiledPlan is immutable; compile a new one and swap the reference")

    @classmethod
    def compile(cls, plan: Plan, cache: RingCache | None = None) -> CompiledPlan:
        """Build every route's table and decisions. Raises InvalidInput for a malformed plan.

        Routes with the same weighted target set (weights to 1e-4) share one Ring; pass the
        agent's long-lived `cache` so that a new plan reuses the tables of unchanged routes.
        """
        if not isinstance(plan, Plan):
            raise InvalidInput("plan", type(plan).__name__, "must be a Plan")
        if isinstance(plan.version, bool) or not isinstance(plan.version, int) or plan.version < 0:
            raise InvalidInput("version", plan.version, "must be a non-negative integer")
        if cache is None:
            cache = RingCache()
        index: dict[str, dict[str, _Entry]] = {}
        rings: dict[tuple[str, str, bool], Ring | None] = {}
        for i, route in enumerate(plan.routes):
            if not isinstance(route, Route):
                raise InvalidInput(f"routes[{i}]", type(route).__name__, "must be a Route")
            for name in ("branch", "skill"):
                if not isinstance(getattr(route, name), str):
                    raise InvalidInput(f"routes[{i}].{name}", getattr(route, name), "must be a string")
            skills = index.setdefault(route.branch, {})
            if route.skill in skills:
                raise InvalidInput(f"routes[{i}]", f"{route.branch}/{route.skill}",
                                   "duplicate route for this branch and skill")
            std, ring = _answer(route, False, plan.version, cache, i)
            rings[(route.branch, route.skill, False)] = ring
            vip = std
            if route.vip_targets:
                vip, ring = _answer(route, True, plan.version, cache, i)
            rings[(route.branch, route.skill, True)] = ring
            skills[route.skill] = (std, vip)
        return cls(plan, index, rings)

    def ring(self, branch: str, skill: str, vip: bool = False) -> Ring | None:
        """The table a route uses (None for a route without targets); for tests and explanations."""
        try:
            return self._rings[(branch, skill, vip)]
        except KeyError:
            _raise_unknown(self, branch, skill)

    def decisions(self) -> list[Decision]:
        """Every distinct answer this plan can give (shells may pre-encode replies)."""
        seen: dict[int, Decision] = {}
        for skills in self.index.values():
            for std, vip in skills.values():
                for d in (*std[1], *vip[1]):
                    seen.setdefault(id(d), d)
        return list(seen.values())

    def __repr__(self) -> str:
        return f"CompiledPlan(version={self.version}, routes={len(self.plan.routes)})"


class LazyPlan:
    """The same answers as `resolve(CompiledPlan.compile(plan, cache), ...)`, built as they are asked.

    An agent compiles a plan once and serves it for minutes to thousands of calls a second, so it
    builds every table up front. The simulator replans every second and looks up a few dozen calls
    per plan: building ~200 answers and several 64 Ki-slot tables per plan was over half its time.
    Here a route's ring key is built and checked on its first lookup, a caller's slot owner is
    computed for that slot alone (`ring.slot_owner`), and the answer for a target (its fallbacks
    and reason, by the same `_fallbacks` and `_reason` as `compile`) when a caller first reaches
    it: every lookup returns a Decision equal to the compiled plan's. Raises InvalidInput as
    `compile` does, but for a route's fields only when that route is first looked up.
    """

    __slots__ = ("version", "plan", "_routes", "_answers", "_known", "_by_entry")

    def __init__(self, plan: Plan, previous: LazyPlan | None = None) -> None:
        """`previous`: the plan this one replaces. A route that is the same Route object as one of
        an earlier plan in the chain (the planner hands back the same object for a route that did
        not change) reuses what was built for it; at most KNOWN_ROUTES routes are remembered."""
        if not isinstance(plan, Plan):
            raise InvalidInput("plan", type(plan).__name__, "must be a Plan")
        if isinstance(plan.version, bool) or not isinstance(plan.version, int) or plan.version < 0:
            raise InvalidInput("version", plan.version, "must be a non-negative integer")
        self.version = plan.version
        self.plan = plan
        # Built for every plan (the simulator's once a second), so the index is one comprehension;
        # a plan it does not fit (a duplicate, a malformed route) is checked route by route below,
        # and a route's types are checked again when it is first looked up.
        try:
            routes = {(r.branch, r.skill): (i, r) for i, r in enumerate(plan.routes)}
        except (AttributeError, TypeError):
            routes = {}
        if len(routes) != len(plan.routes):
            routes = _route_index(plan.routes)
        self._routes = routes
        # (id(route), vip) -> (route, its answer), shared along the chain of plans. The entry holds
        # the route, so its id cannot be reused while the entry lives; the same object, not an
        # equal one, because an equal route may still differ in what validation refuses (a bool
        # weight equals 1.0). Started over when full: a plan has a few hundred routes.
        known = previous._known if previous is not None else {}
        if len(known) > KNOWN_ROUTES:
            known = {}
        self._known: dict[tuple[int, bool], tuple[Route, _LazyAnswer]] = known
        # (branch, skill, vip) -> this plan's answer
        self._answers: dict[tuple[str, str, bool], _LazyAnswer] = {}
        # Every branch of one home center and skill gets a route with the very same targets tuple,
        # kind, action and explanation (the planner's shared entry): their answers are equal, so
        # they are one. Keyed by the tuple's id, which the plan keeps alive and so unique.
        # (The treatment, kept alive by the route, is part of it: branches of one entry may have
        # different treatment chains.)
        self._by_entry: dict[tuple[int, bool, str, str, str, int], _LazyAnswer] = {}

    def resolve(self, branch: str, skill: str, caller: str, tier: str = "") -> Decision:
        """As `resolve` on the compiled plan; InvalidInput names `branch`, `skill` or `caller`."""
        vip = tier == VIP_TIER
        try:
            answer = self._answers.get((branch, skill, vip))
        except TypeError:  # an unhashable branch or skill: named below
            answer = None
        if answer is None:
            answer = self._answers[(branch, skill, vip)] = self._first_lookup(branch, skill, vip)
        if not isinstance(caller, str):
            raise InvalidInput("caller", caller, "must be a string")
        try:
            h = _xxh64(caller.encode())
        except UnicodeEncodeError as e:
            raise InvalidInput("caller", caller, "must be encodable as UTF-8") from e
        key = answer.key
        j = slot_owner(key, h & MASK) if key else 0
        d = answer.built[j]
        # an answer outlives its plan (see _known): a Decision carries its plan's version
        if d is None or d.plan_version != self.version:
            d = answer.built[j] = answer.decision(j, self.version)
        return d

    def _first_lookup(self, branch: object, skill: object, vip: bool) -> _LazyAnswer:
        found = self._routes.get((branch, skill)) if isinstance(branch, str) and isinstance(skill, str) \
            else None
        if found is None:
            _raise_unknown_route(self.version, {b for b, _ in self._routes}, branch, skill)
        i, route = found
        hit = self._known.get((id(route), vip))
        if hit is not None and hit[0] is route:
            return hit[1]
        _check_route(i, route)
        # a route without VIP targets answers VIP callers as standard ones (as compile does)
        effective_vip = vip and bool(route.vip_targets)
        targets = route.vip_targets if effective_vip else route.targets
        entry = (id(targets), effective_vip, str(route.kind), str(route.overload_action), route.explanation,
                 id(route.treatment))
        try:
            answer = self._by_entry.get(entry)
        except TypeError:  # an unhashable explanation: the checks below name it
            answer = None
        if answer is None:
            answer = _LazyAnswer(route, effective_vip, i)
            if type(targets) is tuple and type(route.explanation) is str:
                self._by_entry[entry] = answer
        self._known[(id(route), vip)] = (route, answer)
        return answer


# Routes (with their answers) a chain of LazyPlans remembers: a plan has a few hundred routes and
# most of them come back as the same objects in the next plan; a few plans' worth, a few MiB.
KNOWN_ROUTES = 4096


class _LazyAnswer:
    """One route's answer in a LazyPlan: its ring key, and per key target the (fallbacks, reason)
    and Decision once some caller reached it."""

    __slots__ = ("route", "vip", "targets", "key", "action", "total", "parts", "built")

    def __init__(self, route: Route, vip: bool, index: int) -> None:
        """The checks `_route_parts` makes, without building any target's answer yet."""
        self.route, self.vip = route, vip
        self.action = _checked_action(route, index)
        targets = route.vip_targets if vip else route.targets
        self.key = _checked_key(targets, vip, index)
        self.targets = tuple(targets)
        self.total = sum(w for _, w in self.key)
        self.parts: list[tuple[tuple[str, ...], str] | None] = [None] * max(1, len(self.key))
        self.built: list[Decision | None] = [None] * max(1, len(self.key))

    def decision(self, j: int, version: int) -> Decision:
        part = self.parts[j]
        if part is None:
            part = self.parts[j] = _part(self.route, self.vip, self.targets, self.key, self.total, j,
                                         self.action)
        return Decision(self.key[j][0] if self.key else "", part[0], version, part[1], self.action,
                        self.route.treatment)


def _check_route(i: int, route: object) -> None:
    if not isinstance(route, Route):
        raise InvalidInput(f"routes[{i}]", type(route).__name__, "must be a Route")
    for name in ("branch", "skill"):
        if not isinstance(getattr(route, name), str):
            raise InvalidInput(f"routes[{i}].{name}", getattr(route, name), "must be a string")


def _route_index(routes: Sequence[object]) -> dict[tuple[str, str], tuple[int, Route]]:
    """(branch, skill) -> (position, route), raising InvalidInput for the first malformed route."""
    index: dict[tuple[str, str], tuple[int, Route]] = {}
    for i, route in enumerate(routes):
        _check_route(i, route)
        assert isinstance(route, Route)
        if (route.branch, route.skill) in index:
            raise InvalidInput(f"routes[{i}]", f"{route.branch}/{route.skill}",
                               "duplicate route for this branch and skill")
        index[(route.branch, route.skill)] = (i, route)
    return index


def _raise_unknown_route(version: int, branches: set[str], branch: object, skill: object) -> NoReturn:
    if not isinstance(branch, str):
        raise InvalidInput("branch", branch, "must be a string")
    if not isinstance(skill, str):
        raise InvalidInput("skill", skill, "must be a string")
    if branch not in branches:
        raise InvalidInput("branch", branch, f"no route for this branch in plan {version}")
    raise InvalidInput("skill", skill, f"no route for branch {branch!r} and this skill in plan {version}")


def _raise_unknown(cp: CompiledPlan, branch: object, skill: object, caller: object = "") -> NoReturn:
    """Name the field that made a lookup fail (the slow path, off the success path)."""
    if not isinstance(branch, str):
        raise InvalidInput("branch", branch, "must be a string")
    if not isinstance(skill, str):
        raise InvalidInput("skill", skill, "must be a string")
    skills = cp.index.get(branch)
    if skills is None:
        raise InvalidInput("branch", branch, f"no route for this branch in plan {cp.version}")
    if skill not in skills:
        raise InvalidInput("skill", skill,
                           f"no route for branch {branch!r} and this skill in plan {cp.version}")
    if not isinstance(caller, str):
        raise InvalidInput("caller", caller, "must be a string")
    try:
        caller.encode()
    except UnicodeEncodeError as e:
        raise InvalidInput("caller", caller, "must be encodable as UTF-8") from e
    raise InvalidInput("caller", caller, "lookup failed")  # pragma: no cover - nothing else can fail


def resolve(cp: CompiledPlan, branch: str, skill: str, caller: str, tier: str = "") -> Decision:
    """The center for one call; the same caller gets the same answer while the plan holds.

    Raises InvalidInput naming `branch` or `skill` when the plan has no such route (or `caller`
    when it is not a string).
    """
    try:
        std, vip = cp.index[branch][skill]
        table, decisions = vip if tier == VIP_TIER else std
        return decisions[table[_xxh64(caller.encode()) & MASK]]
    except (KeyError, TypeError, AttributeError, UnicodeEncodeError):
        _raise_unknown(cp, branch, skill, caller)


def resolve_many(cp: CompiledPlan, queries: Iterable[Sequence[str]]) -> list[Decision]:
    """Resolve a batch of (branch, skill, caller[, tier]) against one plan snapshot.

    Raises InvalidInput for the first bad query, its field prefixed with `queries[i].`.
    """
    out: list[Decision] = []
    append = out.append
    index = cp.index
    xxh = _xxh64
    for i, q in enumerate(queries):
        try:
            if len(q) == 4:
                branch, skill, caller, tier = q
            else:
                branch, skill, caller = q
                tier = ""
            std, vip = index[branch][skill]
            table, decisions = vip if tier == VIP_TIER else std
            append(decisions[table[xxh(caller.encode()) & MASK]])
        except (KeyError, TypeError, AttributeError, UnicodeEncodeError, ValueError) as e:
            if not isinstance(q, Sequence) or isinstance(q, str) or len(q) not in (3, 4):
                raise InvalidInput(f"queries[{i}]", q, "must be (branch, skill, caller[, tier])") from e
            try:
                _raise_unknown(cp, q[0], q[1], q[2])
            except InvalidInput as bad:
                raise InvalidInput(f"queries[{i}].{bad.field}", bad.value, bad.why) from e
    return out

