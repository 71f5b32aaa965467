"""B14 end to end: real agent processes against the real control plane (embedded store,
examples/small.yaml). A center is never locked out by its agents' report numbering: an agent
restarted with an empty state dir (a new pod) is accepted at once, two replicas of one center both
count, and an agent whose seq reaches 2^64-1 carries on. Every wait polls with a deadline."""

from __future__ import annotations

from pathlib import Path

from test_agent_fakes import ROOT, AgentProc, http_get, poll

SMALL = ROOT / "examples" / "small.yaml"


def _metric(port: int, name: str) -> float:
    """The sum of a metric's samples whose line starts with `name` (labels included)."""
    text = http_get(port, "/metrics")[1]
    return sum(float(line.rsplit(" ", 1)[1]) for line in str(text).splitlines() if line.startswith(name))


def _reports(agent: AgentProc, outcome: str) -> float:
    return _metric(agent.http_port, f'callroute_agent_reports_total{{outcome="{outcome}"}}')


def _agent(tmp: Path, cp: str, state_dir: Path) -> AgentProc:
    a = AgentProc("north", tmp, cp, grpc=False, state_dir=state_dir, extra={"report_interval_s": 0.1})
    a.args[a.args.index("--topology") + 1] = str(SMALL)
    return a


def _north(mport: int, status: str) -> float:
    return _metric(mport, f'callroute_controlplane_center_health{{center="north",status="{status}"}}')


def test_b14_new_pod_with_an_empty_state_dir_and_two_replicas(controlplane, tmp_path):
    cp, mport = controlplane
    old = _agent(tmp_path, cp, tmp_path / "old-pod").start()
    new = _agent(tmp_path, cp, tmp_path / "new-pod")
    try:
        old.wait_listening()
        # the old pod reports for a while: its seqs run well past what a fresh agent starts at
        poll(lambda: _reports(old, "accepted") >= 30, 30, every_s=0.1, what="the old pod's reports")
        # a rolling update: the new pod, with an empty state dir, starts beside the old one
        new.start().wait_listening()
        poll(lambda: _reports(new, "accepted") >= 10, 20, every_s=0.1, what="the new pod's reports accepted")
        assert _reports(new, "rejected") == 0
        # two replicas of one center: both count while both run
        before = _reports(old, "accepted")
        poll(lambda: _reports(old, "accepted") >= before + 5, 10, every_s=0.1,
             what="the old pod still counted")
        old.stop()
        after = _reports(new, "accepted")
        poll(lambda: _reports(new, "accepted") >= after + 10, 10, every_s=0.1, what="the new pod alone")
        assert _reports(new, "rejected") == 0
        assert _metric(mport, "callroute_controlplane_report_rejects_total") == 0
        # never locked out: north was never declared down, and is healthy now
        assert _north(mport, "down") == 0 and _north(mport, "healthy") == 1
    finally:
        old.stop()
        new.stop()


def test_b14_an_agent_at_the_largest_seq_rolls_into_a_new_incarnation(controlplane, tmp_path):
    cp, mport = controlplane
    state = tmp_path / "state"
    state.mkdir()
    (state / "report_seq").write_text(str(2**64 - 4))  # three seqs left before the top
    agent = _agent(tmp_path, cp, state).start()
    try:
        agent.wait_listening()
        poll(lambda: _reports(agent, "accepted") >= 15, 30, every_s=0.1, what="reports past the top seq")
        assert _reports(agent, "rejected") == 0
        assert _metric(mport, "callroute_controlplane_report_rejects_total") == 0
        assert _north(mport, "healthy") == 1
        # the roll-over took a new incarnation, persisted before any report carried it
        assert int((state / "report_incarnation").read_text()) > 10**18
        assert int((state / "report_seq").read_text()) < 2**63
    finally:
        agent.stop()
