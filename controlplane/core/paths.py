"""Broken DR and overflow paths (issue 16, F21): a receiver the sender's own probes cannot reach
leaves that sender's routes, and only that sender's. Pure.

A branch's calls are looked up by its home center's agent (its switches ask their local agent), so
the sender of a route is `route.home`. The sender's reports carry the whole set of paths it finds
broken (`Report.broken_paths`); `PathBook` keeps them with since-when for operators, and
`apply_broken_paths` takes the broken receivers out of the sender's routes, spreading their weight
over the route's other targets in proportion. A route whose every target is broken is left as it
is and named in meta["paths_kept"]: a path that may be broken beats sending the calls nowhere, and
the center-level health (F17's arrival check) still judges the receiver.

A route whose home sends no reports (a dark center: closed, its agent gone) has no probes of its
own: its switches' lookups go to a backup agent the control plane cannot name. For those routes a
receiver is dropped when more than half of the reporting senders (`senders`, the receiver itself
aside) find it broken: that is the receiver's entry, broken for everyone, which was the 2020-02-04
failure (Wuhan dark, its overflow not arriving at Chengdu). A reporting sender's own routes follow
only its own probes.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from .model import Plan, Route, Target


class BrokenPath(msgspec.Struct, frozen=True):
    sender: str
    receiver: str
    since: float  # `now` of the first report that named it
    reason: str


class PathBook:
    """The broken paths as the senders last reported them."""

    def __init__(self) -> None:
        self._by_sender: dict[str, dict[str, BrokenPath]] = {}

    def update(self, sender: str, broken: dict[str, str], now: float) -> list[tuple[str, str, bool]]:
        """`sender`'s report named these receivers broken: (sender, receiver, broken?) of each
        change, so the caller can publish and log them. A receiver it no longer names is healed."""
        old = self._by_sender.get(sender, {})
        if not broken and not old:
            return []
        new = {r: old[r] if r in old else BrokenPath(sender, r, now, why) for r, why in broken.items()}
        changes = [(sender, r, True) for r in new if r not in old]
        changes += [(sender, r, False) for r in old if r not in new]
        if new:
            self._by_sender[sender] = new
        else:
            self._by_sender.pop(sender, None)
        return changes

    def forget(self, sender: str) -> list[tuple[str, str, bool]]:
        """The sender is DOWN: its paths say nothing any more (it sends no calls)."""
        return [(sender, r, False) for r in self._by_sender.pop(sender, {})]

    def has(self, sender: str) -> bool:
        return sender in self._by_sender

    def broken(self) -> dict[str, set[str]]:
        return {s: set(rs) for s, rs in self._by_sender.items()}

    def all(self) -> list[BrokenPath]:
        return sorted((p for rs in self._by_sender.values() for p in rs.values()),
                      key=lambda p: (p.sender, p.receiver))


def _without(targets: tuple[Target, ...], gone: set[str]) -> tuple[Target, ...] | None:
    """`targets` without the `gone` centers, reweighted to sum 1; None when nothing would be left
    or nothing changes."""
    if not any(t.center in gone and t.weight > 0 for t in targets):
        return None
    kept = [t for t in targets if t.center not in gone and t.weight > 0]
    total = sum(t.weight for t in kept)
    if not kept or total <= 0:
        return None
    return tuple(msgspec.structs.replace(t, weight=t.weight / total) for t in kept)


def broken_for_most(broken: dict[str, set[str]], senders: Iterable[str]) -> set[str]:
    """Receivers more than half of the reporting `senders` (the receiver itself aside) find broken."""
    live = set(senders)
    out = set()
    for receiver in {r for rs in broken.values() for r in rs}:
        voters = live - {receiver}
        against = sum(1 for s in voters if receiver in broken.get(s, ()))
        if voters and 2 * against > len(voters):
            out.add(receiver)
    return out


def apply_broken_paths(plan: Plan, broken: dict[str, set[str]], senders: Iterable[str] = ()) -> Plan:
    """`plan` with each sender's broken receivers out of its routes, and receivers broken for most
    `senders` (the centers reporting now) out of the routes of homes that do not report (see the
    module doc)."""
    if not broken:
        return plan
    live = set(senders)
    dark_gone = broken_for_most(broken, live)
    routes: list[Route] = []
    dropped: list[str] = []
    kept: list[str] = []
    def why(home: str, receivers: list[str]) -> str:
        if home in live or home in broken:
            return f"path {home} -> {', '.join(receivers)} broken (probes)"
        return f"{', '.join(receivers)} entry broken for most senders (probes; {home} sends no reports)"

    for r in plan.routes:
        gone = broken.get(r.home) if r.home in live or r.home in broken else dark_gone
        if not gone:
            routes.append(r)
            continue
        targets = _without(r.targets, gone)
        vip = _without(r.vip_targets, gone) if r.vip_targets else None
        if targets is None and any(t.center in gone and t.weight > 0 for t in r.targets):
            kept.append(f"{r.branch}/{r.skill}")
        if targets is None and vip is None:
            routes.append(r)
            continue
        receivers = sorted(gone & {t.center for t in (*r.targets, *r.vip_targets)})
        dropped.append(f"{r.branch}/{r.skill}")
        routes.append(msgspec.structs.replace(
            r, targets=targets if targets is not None else r.targets,
            vip_targets=vip if vip is not None else r.vip_targets,
            explanation=f"{r.explanation}; {why(r.home, receivers)}".lstrip("; ")))
    meta = dict(plan.meta)
    if dropped:
        meta["paths_broken"] = ",".join(f"{s}->{r}" for s in sorted(broken) for r in sorted(broken[s]))
        if dark_gone:
            meta["entries_broken"] = ",".join(sorted(dark_gone))
    if kept:
        meta["paths_kept"] = ",".join(kept)
    return msgspec.structs.replace(plan, routes=tuple(routes), meta=meta)

