"""Issue 16 in the leader's brain, driven by `now` (pure): a silent center is probed by its peers and
is DOWN as soon as they all fail to reach it (F18), kept with its routes while they reach it (F19),
and more than half the network silent at once freezes the plan instead of DR (F20)."""

from __future__ import annotations

from pathlib import Path

from controlplane.core.brain import LeaderBrain
from controlplane.core.health import HealthSettings
from controlplane.core.model import AdminState, Report, SkillLoad, Status
from controlplane.core.suspicion import SuspicionSettings
from controlplane.core.topology import load_topology, topology_hash

ROOT = Path(__file__).resolve().parent.parent
HS = HealthSettings(interval_s=0.5)
SS = SuspicionSettings()


class Net:
    """A brain and the reports of a network of agents, every agent reporting each 0.5 s."""

    def __init__(self, topology: str) -> None:
        self.topo = load_topology(ROOT / "examples" / topology)
        self.b = LeaderBrain(self.topo, topology_hash(self.topo), 0.0, publish_interval_s=1.0,
                             base_version=0, health_settings=HS, suspicion_settings=SS)
        self.seq = 0
        self.asked: dict[str, list[str]] = {}  # prober -> targets asked of it (from its acks)
        self.now = 0.0
        self.broken: dict[str, dict[str, str]] = {}  # sender -> the paths its reports name broken

    def report(self, center: str, probes: dict[str, bool] | None = None) -> None:
        self.seq += 1
        skills = {s: SkillLoad(logged_in=n, ready=n // 2, busy=n - n // 2, aht_s=240.0)
                  for s, n in next(c for c in self.topo.centers if c.id == center).agents.items()}
        r = Report(center=center, seq=self.seq, sent_at=1.0, interval_s=0.5, state=AdminState.OPEN,
                   skills=skills, probes=probes or {}, broken_paths=self.broken.get(center, {}))
        self.b.on_report(r, self.now, count_demand=False)
        self.asked.setdefault(center, []).extend(self.b.probe_requests(center))

    def run(self, until: float, silent: set[str], reach: dict[str, bool] | None = None) -> None:
        """Every center not in `silent` reports each 0.5 s (staggered) until `until`; a prober
        answers the targets it was asked about with `reach` (target -> reachable) on its next report."""
        ids = self.topo.center_ids()
        while self.now < until - 1e-9:
            for c in ids:
                self.now = round(self.now + 0.5 / len(ids), 6)
                self.b.expire(self.now)
                if self.b.due(self.now):
                    p = self.b.compute(self.now, self.now)
                    if p is not None:
                        self.b.published(p, self.now)
                if c in silent:
                    continue
                answers = {t: (reach or {}).get(t, False) for t in self.asked.pop(c, [])}
                self.report(c, answers)

    def status(self, center: str) -> Status:
        return self.b.tracker.view(self.now)[center].status


def started(topology: str) -> Net:
    n = Net(topology)
    n.run(2.0, set())
    assert all(n.status(c) == Status.HEALTHY for c in n.topo.center_ids())
    return n


def test_f18_silent_center_is_down_once_its_peers_cannot_reach_it() -> None:
    n = started("national.yaml")
    lost_at = n.now
    n.run(lost_at + 2.0, {"wuhan"})
    # suspected at 1 s of silence, three peers asked on their next acks, answered on the report after
    assert n.status("wuhan") == Status.DOWN
    assert "peers could not reach it" in n.b.tracker.view(n.now)["wuhan"].reason
    assert n.b.last_plan is not None and "wuhan" in n.b.last_plan.closed
    assert sum(len(v) for v in n.asked.values()) <= SS.probe_k  # only a round's worth outstanding


def test_without_probe_answers_the_down_timer_still_decides() -> None:
    n = started("national.yaml")
    lost_at = n.now
    # peers are asked but never answer (agents without `peers`): down_after_s, as before issue 16
    for _ in range(int(HS.down_after_s / 0.5) - 1):
        n.run(n.now + 0.5, {"wuhan"})
        n.asked.clear()
    assert n.status("wuhan") == Status.STALE
    n.run(lost_at + HS.down_after_s + 0.5, {"wuhan"})
    assert n.status("wuhan") == Status.DOWN


def test_f19_a_cut_link_keeps_the_center_and_its_routes() -> None:
    n = started("national.yaml")
    before = n.b.last_plan
    assert before is not None
    n.run(n.now + 3 * HS.down_after_s, {"wuhan"}, reach={"wuhan": True})
    view = n.b.tracker.view(n.now)["wuhan"]
    assert view.status == Status.STALE and view.weight == 1.0 and "link cut" in view.reason
    assert n.b.last_plan is not None and "wuhan" not in n.b.last_plan.closed
    # its branches still go home: no DR route for a center we merely cannot hear
    wuhan_home = [r for r in n.b.last_plan.routes if r.home == "wuhan"]
    assert wuhan_home and all(any(t.center == "wuhan" and t.weight > 0 for t in r.targets)
                              for r in wuhan_home)


def test_f19_then_f18_a_cut_link_that_becomes_a_dead_center() -> None:
    n = started("national.yaml")
    n.run(n.now + 3.0, {"wuhan"}, reach={"wuhan": True})
    assert n.status("wuhan") == Status.STALE
    n.run(n.now + 2.0, {"wuhan"}, reach={"wuhan": False})
    assert n.status("wuhan") == Status.DOWN


def test_f20_five_of_nine_silent_freezes_the_plan() -> None:
    n = started("national.yaml")
    frozen = n.b.last_plan
    assert frozen is not None
    cut = {"wuhan", "chengdu", "beijing", "shanghai", "tianjin"}
    n.run(n.now + 3 * HS.down_after_s, cut)
    assert n.b.panic and [on for _, on in n.b.take_panic_changes()] == [True]
    assert all(n.status(c) != Status.DOWN for c in cut)
    assert n.b.last_plan is frozen  # nothing published: agents keep their last good plan
    # an operator can still act while frozen
    n.b.set_admin({"lanzhou": AdminState.CLOSED})
    assert n.b.due(n.now)
    # the network comes back: the freeze ends by itself
    n.run(n.now + 2.0, set())
    assert not n.b.panic and [on for _, on in n.b.take_panic_changes()] == [False]
    assert all(n.status(c) != Status.DOWN for c in cut)


def test_four_of_nine_silent_is_not_a_panic() -> None:
    n = started("national.yaml")
    cut = {"wuhan", "chengdu", "beijing", "shanghai"}
    n.run(n.now + 2.0, cut)
    assert not n.b.panic
    assert all(n.status(c) == Status.DOWN for c in cut)


# ---------------------------------------------------------------- F21: broken DR paths


def test_f21_a_broken_path_leaves_only_its_senders_routes() -> None:
    n = started("national.yaml")
    # wuhan closed: its branches' calls go to DR receivers, looked up by wuhan's agent
    n.b.set_admin({"wuhan": AdminState.CLOSED})
    n.run(n.now + 0.5, set())
    plan = n.b.last_plan
    assert plan is not None and "wuhan" in plan.closed
    # a sender whose routes use another center, and that receiver
    r0 = next(r for r in plan.routes if any(t.center != r.home and t.weight > 0 for t in r.targets))
    sender, receiver = r0.home, next(t.center for t in r0.targets if t.center != r0.home and t.weight > 0)
    n.b.on_report(Report(center=sender, seq=10_000, sent_at=1.0, interval_s=0.5, state=AdminState.OPEN,
                         skills=plan_skills(n, sender), broken_paths={receiver: "no answer within 0.3 s"}),
                  n.now, count_demand=False)
    assert n.b.due(n.now) and n.b.path_changes == [(sender, receiver, True)]
    p = n.b.compute(n.now, n.now)
    assert p is not None and p.meta["cause"] == "path broken or restored"
    for r in p.routes:
        used = {t.center for t in r.targets if t.weight > 0}
        if r.home == sender:
            assert receiver not in used or used == {receiver}, r
        assert abs(sum(t.weight for t in r.targets) - 1) < 1e-6 or not r.targets
    # other senders still use that receiver where the planner sends them there
    others = [r for r in p.routes if r.home != sender and any(t.center == receiver for t in r.targets)]
    before = [r for r in plan.routes if r.home != sender and any(t.center == receiver for t in r.targets)]
    assert len(others) == len(before)


def plan_skills(n: Net, center: str) -> dict[str, SkillLoad]:
    return {s: SkillLoad(logged_in=k, ready=k // 2, busy=k - k // 2, aht_s=240.0)
            for s, k in next(c for c in n.topo.centers if c.id == center).agents.items()}


def test_f21_a_path_no_longer_reported_is_restored() -> None:
    n = started("national.yaml")
    n.b.set_admin({"wuhan": AdminState.CLOSED})
    n.run(n.now + 0.5, set())
    sk = plan_skills(n, "wuhan")
    for seq, broken in ((20_000, {"chengdu": "entry not accepting calls"}), (20_001, {})):
        n.b.on_report(Report(center="wuhan", seq=seq, sent_at=1.0, interval_s=0.5, state=AdminState.OPEN,
                             skills=sk, broken_paths=broken), n.now, count_demand=False)
    assert n.b.path_changes == [("wuhan", "chengdu", True), ("wuhan", "chengdu", False)]
    assert n.b.paths.all() == []


def _to(plan: object, home: str, receiver: str) -> list[object]:
    return [r for r in plan.routes if r.home == home  # type: ignore[attr-defined]
            and any(t.center == receiver and t.weight > 0 for t in r.targets)]


def test_f21_2020_02_04_a_dark_centers_overflow_leaves_an_entry_most_senders_find_broken() -> None:
    # Wuhan dark (no agent, no reports): its branches' lookups go to a backup agent the control plane
    # cannot name, so no sender's own probes apply to wuhan's routes. Chengdu's entry stops taking
    # calls: every other agent's probes find it broken, so it is the entry, broken for everyone.
    n = started("national.yaml")
    n.run(n.now + 4.0, {"wuhan"})
    assert n.status("wuhan") == Status.DOWN
    plan = n.b.last_plan
    assert plan is not None and _to(plan, "wuhan", "chengdu"), "wuhan's DR routes use chengdu"
    senders = [c for c in n.topo.center_ids() if c not in ("wuhan", "chengdu")]
    # one sender alone: its path, not the entry; wuhan's routes keep chengdu
    n.broken = {senders[0]: {"chengdu": "entry not accepting calls"}}
    n.run(n.now + 1.0, {"wuhan"})
    assert _to(n.b.last_plan, "wuhan", "chengdu")
    # more than half of the reporting senders (chengdu aside): the entry is broken
    n.broken = {s: {"chengdu": "entry not accepting calls"} for s in senders[: len(senders) // 2 + 1]}
    n.run(n.now + 1.0, {"wuhan"})
    p = n.b.last_plan
    assert not _to(p, "wuhan", "chengdu"), "wuhan's routes still send calls to chengdu's broken entry"
    assert any("entry broken for most senders" in r.explanation for r in p.routes if r.home == "wuhan")
    assert p.meta.get("entries_broken") == "chengdu"
    # a sender that still reaches chengdu keeps it in its own routes
    fine = senders[-1]
    before = _to(plan, fine, "chengdu")
    assert len(_to(p, fine, "chengdu")) == len(before)
    # healed: wuhan's routes take chengdu again
    n.broken = {}
    n.run(n.now + 1.0, {"wuhan"})
    assert _to(n.b.last_plan, "wuhan", "chengdu")


def test_path_changes_are_coalesced_but_never_hold_back_a_center_going_down() -> None:
    # one receiver's entry failing is found by every other center within about a second, each in
    # its own report: publishing each one was a plan storm (9 national plans in 1.3 s, measured)
    from controlplane.core.brain import PATH_COALESCE_S

    n = started("national.yaml")
    n.b.set_admin({"hefei": AdminState.CLOSED})  # a change, published now
    published_at = n.now
    first = n.b.compute(published_at, published_at)
    assert first is not None
    n.b.published(first, published_at)
    t = n.now = published_at + 0.01
    for i, sender in enumerate(("beijing", "tianjin")):
        n.b.on_report(Report(center=sender, seq=30_000 + i, sent_at=1.0, interval_s=0.5,
                             state=AdminState.OPEN, skills=plan_skills(n, sender),
                             broken_paths={"chengdu": "entry not accepting calls"}), t, count_demand=False)
    assert not n.b.due(t), "a path change right after a publish waits"
    assert n.b.next_wakeup(t) == published_at + PATH_COALESCE_S
    assert n.b.due(published_at + PATH_COALESCE_S)
    # a center going down does not wait behind them
    n.b.set_admin({"hefei": AdminState.CLOSED, "wuhan": AdminState.CLOSED})
    assert n.b.due(t) and n.b.next_wakeup(t) == t
    p = n.b.compute(t, t)
    assert p is not None and "wuhan" in p.closed
    assert not [r for r in p.routes
                if r.home == "beijing" and any(x.center == "chengdu" for x in r.targets)]
