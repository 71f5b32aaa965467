"""Live topology changes, pure: what changed between two topologies and whose calls it moves.

`callroute topology diff|apply` (issue 18) shows an operator the change before it is applied, and
the two-person rule asks for a second operator when the change moves calls off an open center.
Both come from here: `diff_topologies` lists the changes (the audit entry's diff), and
`traffic_moved_off` names the open centers that lose calls and why, judged on the plan in force:
- a branch re-homed (or removed) whose old home is open: its calls leave that center;
- a schedule rule dropped whose host is open: that center stops hosting the branch at those hours;
- a center removed while open and sent calls by the plan;
- a skill removed from an open center's staffing while the plan sends it calls of that skill;
- a skill removed from a branch's calls while the plan sends them to open centers (they stop).
Everything else (a new skill, center or branch, staffing or forecast changed, policy tuned, an
overload treatment chain changed) does not by itself move calls off an open center, so it applies
at once; the planner then moves calls
as it always does (overflow, with its hysteresis and caps).

Must not: read the clock, do I/O, import the service layer (tests/test_core_purity.py).
"""

from __future__ import annotations

import math
from collections.abc import Collection

import msgspec

from .model import Branch, Center, Plan, Topology, TreatmentStep
from .treatments import branch_chain, release_after

# change kinds, as the audit entry and the CLI show them
CENTER_ADDED = "center added"
CENTER_REMOVED = "center removed"
CENTER_CHANGED = "center changed"
STAFFING = "staffing changed"
SKILL_ADDED = "skill added"
SKILL_REMOVED = "skill removed"
BRANCH_ADDED = "branch added"
BRANCH_REMOVED = "branch removed"
BRANCH_REHOMED = "branch re-homed"
FORECAST = "forecast changed"
PINNED = "pinned changed"
SCHEDULE = "schedule changed"
ZONE = "time zone changed"
POLICY = "policy changed"
# an overload treatment chain (core/treatments.py) of the policy, a skill, a branch or a branch's
# skill: what callers hear when the predicted wait passes a step, not where their calls go
TREATMENTS = "treatments changed"
# how a chain that is not set reads: a branch's or a skill's falls back to the next chain out
# (treatments.chain_for); the policy's default is the last one, so none applies
INHERITED = "inherited"
NO_CHAIN = "none"
# the Policy fields that hold chains: diffed as chains, not as the generic policy field's JSON
_CHAIN_FIELDS = frozenset({"treatments", "skill_treatments"})


class TopologyChange(msgspec.Struct, frozen=True):
    """One difference between two topologies: `kind` of `subject`, from `before` to `after`."""

    kind: str
    subject: str
    before: str = ""
    after: str = ""

    def text(self) -> str:
        if self.before and self.after:
            return f"{self.kind}: {self.subject}: {self.before} -> {self.after}"
        if self.after:
            return f"{self.kind}: {self.subject}: {self.after}"
        if self.before:
            return f"{self.kind}: {self.subject} (was {self.before})"
        return f"{self.kind}: {self.subject}"


def _staff(agents: dict[str, int]) -> str:
    return ", ".join(f"{s}={n}" for s, n in sorted(agents.items()))


def _rule(r: object) -> str:
    return msgspec.json.encode(r).decode()


def chain_text(chain: tuple[TreatmentStep, ...], unset: str = INHERITED) -> str:
    """A treatment chain in one line, each step as its threshold and action (and prompt)."""
    if not chain:
        return unset
    return "; ".join(f"> {st.if_wait_over_s:g} s {st.action.value}" + (f" {st.prompt}" if st.prompt else "")
                     for st in chain)


def _diff_chains(subject: str, a: tuple[TreatmentStep, ...], b: tuple[TreatmentStep, ...],
                 per_a: dict[str, tuple[TreatmentStep, ...]], per_b: dict[str, tuple[TreatmentStep, ...]],
                 unset: str) -> list[TopologyChange]:
    """The chain for every skill of `subject` (a branch, or the policy), then each skill's own."""
    out: list[TopologyChange] = []
    if a != b:
        out.append(TopologyChange(TREATMENTS, subject, chain_text(a, unset), chain_text(b, unset)))
    for s in sorted(per_a.keys() | per_b.keys()):
        ca, cb = per_a.get(s, ()), per_b.get(s, ())
        if ca != cb:
            out.append(TopologyChange(TREATMENTS, f"{subject}/{s}", chain_text(ca), chain_text(cb)))
    return out


def _diff_center(a: Center, b: Center) -> list[TopologyChange]:
    out: list[TopologyChange] = []
    for s in sorted(set(a.agents) | set(b.agents)):
        na, nb = a.agents.get(s, 0), b.agents.get(s, 0)
        if na == nb:
            continue
        if na <= 0 < nb:
            out.append(TopologyChange(SKILL_ADDED, f"{b.id}/{s}", "", f"{nb} agents"))
        elif nb <= 0 < na:
            out.append(TopologyChange(SKILL_REMOVED, f"{b.id}/{s}", f"{na} agents", ""))
        else:
            out.append(TopologyChange(STAFFING, f"{b.id}/{s}", str(na), str(nb)))
    for name in ("region", "address", "tz"):
        va, vb = getattr(a, name), getattr(b, name)
        if va != vb:
            out.append(TopologyChange(CENTER_CHANGED, f"{b.id}.{name}", va, vb))
    return out


def _diff_branch(a: Branch, b: Branch) -> list[TopologyChange]:
    out: list[TopologyChange] = []
    if a.home != b.home:
        out.append(TopologyChange(BRANCH_REHOMED, b.id, a.home, b.home))
    for s in sorted(set(a.calls_per_hour) | set(b.calls_per_hour)):
        if s not in a.calls_per_hour:
            out.append(TopologyChange(SKILL_ADDED, f"{b.id}/{s}", "", f"{b.calls_per_hour[s]:g} calls/h"))
        elif s not in b.calls_per_hour:
            out.append(TopologyChange(SKILL_REMOVED, f"{b.id}/{s}", f"{a.calls_per_hour[s]:g} calls/h", ""))
        elif a.calls_per_hour[s] != b.calls_per_hour[s]:
            out.append(TopologyChange(FORECAST, f"{b.id}/{s}", f"{a.calls_per_hour[s]:g}",
                                      f"{b.calls_per_hour[s]:g}"))
    if a.pinned != b.pinned:
        out.append(TopologyChange(PINNED, b.id, ",".join(a.pinned), ",".join(b.pinned)))
    if a.tz != b.tz:
        out.append(TopologyChange(ZONE, b.id, a.tz or "home's", b.tz or "home's"))
    if a.schedule != b.schedule:
        out.append(TopologyChange(SCHEDULE, b.id, ";".join(map(_rule, a.schedule)),
                                  ";".join(map(_rule, b.schedule))))
    out += _diff_chains(b.id, a.treatments, b.treatments, a.skill_treatments, b.skill_treatments, INHERITED)
    return out


def diff_topologies(old: Topology, new: Topology) -> tuple[TopologyChange, ...]:
    """Every difference, centers first then branches then policy, each in id order."""
    out: list[TopologyChange] = []
    ca = {c.id: c for c in old.centers}
    cb = {c.id: c for c in new.centers}
    for cid in sorted(ca.keys() | cb.keys()):
        a, b = ca.get(cid), cb.get(cid)
        if a is None and b is not None:
            out.append(TopologyChange(CENTER_ADDED, cid, "", _staff(b.agents)))
        elif b is None and a is not None:
            out.append(TopologyChange(CENTER_REMOVED, cid, _staff(a.agents), ""))
        elif a is not None and b is not None and a != b:
            out += _diff_center(a, b)
    ba = {b.id: b for b in old.branches}
    bb = {b.id: b for b in new.branches}
    for bid in sorted(ba.keys() | bb.keys()):
        x, y = ba.get(bid), bb.get(bid)
        if x is None and y is not None:
            out.append(TopologyChange(BRANCH_ADDED, bid, "", f"home {y.home}"))
        elif y is None and x is not None:
            out.append(TopologyChange(BRANCH_REMOVED, bid, f"home {x.home}", ""))
        elif x is not None and y is not None and x != y:
            out += _diff_branch(x, y)
    if old.policy != new.policy:
        pa = msgspec.to_builtins(old.policy)
        pb = msgspec.to_builtins(new.policy)
        for k in sorted(pa.keys() | pb.keys()):
            if k in _CHAIN_FIELDS:
                continue  # named as chains below, not as JSON
            if pa.get(k) != pb.get(k):
                out.append(TopologyChange(POLICY, f"policy.{k}", _rule(pa.get(k)), _rule(pb.get(k))))
        out += _diff_chains("policy", old.policy.treatments, new.policy.treatments,
                            old.policy.skill_treatments, new.policy.skill_treatments, NO_CHAIN)
    return tuple(out)


def _carried(plan: Plan | None) -> dict[str, set[str]]:
    """center -> skills the plan sends it calls of (any target with a weight above 0)."""
    out: dict[str, set[str]] = {}
    if plan is None:
        return out
    for r in plan.routes:
        for ts in (r.targets, r.vip_targets):
            for t in ts:
                if t.weight > 0:
                    out.setdefault(t.center, set()).add(r.skill)
    return out


def _route_centers(plan: Plan | None, branch: str, skill: str) -> set[str]:
    if plan is None:
        return set()
    for r in plan.routes:
        if r.branch == branch and r.skill == skill:
            return {t.center for ts in (r.targets, r.vip_targets) for t in ts if t.weight > 0}
    return set()


def traffic_moved_off(old: Topology, new: Topology, plan: Plan | None,
                      open_centers: Collection[str]) -> dict[str, tuple[str, ...]]:
    """The open centers that `new` takes calls away from, each with why, sorted by center.

    `plan` is the plan in force (None: none yet, then a center carries what its topology homes).
    """
    why: dict[str, list[str]] = {}
    carried = _carried(plan)
    is_open = set(open_centers)

    def add(center: str, reason: str) -> None:
        if center in is_open:
            why.setdefault(center, []).append(reason)

    ca = {c.id: c for c in old.centers}
    cb = {c.id: c for c in new.centers}
    homes: dict[str, set[str]] = {}
    for b in old.branches:
        if any(v > 0 for v in b.calls_per_hour.values()):
            homes.setdefault(b.home, set()).add(b.id)
    for cid, c in ca.items():
        if cid not in cb and (carried.get(cid) or homes.get(cid)):
            add(cid, f"center {cid} removed while it takes calls")
        elif cid in cb:
            for s, n in sorted(c.agents.items()):
                if n > 0 and cb[cid].agents.get(s, 0) <= 0 and (
                        s in carried.get(cid, ()) or plan is None):
                    add(cid, f"skill {s} removed at {cid}, which takes {s} calls")
    bb = {b.id: b for b in new.branches}
    for b in old.branches:
        nb = bb.get(b.id)
        calls = any(v > 0 for v in b.calls_per_hour.values())
        if nb is None:
            if calls:
                add(b.home, f"branch {b.id} removed (home {b.home})")
            continue
        if nb.home != b.home and calls:
            add(b.home, f"branch {b.id} re-homed {b.home} -> {nb.home}")
        zone_a = b.tz or (ca[b.home].tz if b.home in ca else "")
        zone_b = nb.tz or (cb[nb.home].tz if nb.home in cb else "")
        if zone_a != zone_b and nb.schedule and calls:
            # the schedule's hours now fall on other UTC instants: calls leave home or hosts then
            for host in dict.fromkeys([nb.home, *(r.host for r in nb.schedule)]):
                add(host, f"branch {b.id}'s schedule read in {zone_b or 'the network zone'} "
                       f"(was {zone_a or 'the network zone'})")
        for r in b.schedule:
            if r in nb.schedule or not calls:
                continue
            # the skills r hosted that no rule of the new schedule hosts there (a rule naming
            # skills hosts only those: whole-branch -> IVR only takes retail off the host)
            lost = [s for s in (r.skills or tuple(b.calls_per_hour))
                    if r.host != nb.home and not any(
                        n.host == r.host and (not n.skills or s in n.skills) for n in nb.schedule)]
            if lost:
                which = "" if set(lost) == set(r.skills or b.calls_per_hour) else f" for {','.join(lost)}"
                add(r.host, f"branch {b.id} no longer hosted by {r.host}{which} ({_rule(r)})")
        for s, cph in sorted(b.calls_per_hour.items()):
            if s not in nb.calls_per_hour and cph > 0:
                targets = _route_centers(plan, b.id, s) or ({b.home} if plan is None else set())
                for target in sorted(targets):
                    add(target, f"skill {s} removed from branch {b.id}, whose calls {target} takes")
    old_branches = {b.id: b for b in old.branches}
    for nb in new.branches:
        ob = old_branches.get(nb.id)
        if ob is None:
            continue
        for s, cph in sorted(ob.calls_per_hour.items()):
            if cph <= 0 or s not in nb.calls_per_hour:
                continue
            # a releasing step (announcement, channel guidance) added or made earlier: calls that
            # waited for an agent at their center are sent away with a prompt instead
            was, _ = release_after(branch_chain(old, ob, s)[0])
            now, step = release_after(branch_chain(new, nb, s)[0])
            if step is None or now >= was:
                continue
            before = "never" if math.isinf(was) else f"{was:g} s"
            for target in sorted(_route_centers(plan, nb.id, s) or ({nb.home} if plan is None else set())):
                add(target, f"branch {nb.id}'s {s} calls released after {now:g} s of predicted wait "
                            f"({step.action.value}; was {before})")
    return {c: tuple(dict.fromkeys(why[c])) for c in sorted(why)}


def describe(changes: tuple[TopologyChange, ...], limit: int = 40) -> str:
    """The audit entry's diff: one change per `; `, at most `limit` (then how many more)."""
    if not changes:
        return "no change"
    shown = [c.text() for c in changes[:limit]]
    more = f"; ... ({len(changes) - limit} more)" if len(changes) > limit else ""
    return "; ".join(shown) + more
