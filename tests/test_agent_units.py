"""Agent parts without processes: settings, the simulated and push ACDs, sequence and plan stores,
the plan cache's accept/reject rules. Time is driven by passing `now`."""

from __future__ import annotations

import json
import math
import time

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_agent_fakes import make_plan, small_topology

from agents.counting import RoutedCounter, SeqStore, split_calls
from agents.plancache import PlanCache, PlanStore, self_consistent
from agents.pushacd import PushACD
from agents.settings import AgentSettings, load_settings
from agents.simacd import MAX_QUEUE, SimulatedACD
from controlplane.core.model import (
    AdminState,
    InvalidInput,
    Report,
    Route,
    Target,
    validate_report,
)

# ---------------------------------------------------------------- settings


def test_settings_defaults_and_overrides(tmp_path):
    cfg = tmp_path / "a.yaml"
    cfg.write_text("report_interval_s: 0.25\nhttp: 127.0.0.1:9000\n")
    s = load_settings(cfg, center="c0", controlplane="127.0.0.1:1,127.0.0.1:2", http=None)
    assert s.report_interval_s == 0.25 and s.http == "127.0.0.1:9000"
    assert s.controlplane == ("127.0.0.1:1", "127.0.0.1:2")
    assert AgentSettings(center="x").report_interval_s == 0.5


@pytest.mark.parametrize("override,field", [
    ({"center": "bad id!"}, "center"),
    ({"center": "c0", "http": "nohost"}, "http"),
    ({"center": "c0", "acd": "magic"}, "acd"),
    ({"center": "c0", "report_interval_s": -1}, "report_interval_s"),
    ({"center": "c0", "report_interval_s": math.nan}, "report_interval_s"),
    ({"center": "c0", "controlplane": "a:b"}, "controlplane"),
    ({"center": "c0", "controlplane_via": {"nohost": "127.0.0.1:1"}}, "controlplane_via"),
    ({"center": "c0", "controlplane_via": {"10.0.0.1:50051": "x"}}, "controlplane_via.10.0.0.1:50051"),
    ({"center": "c0", "controlplane_via": {f"10.0.0.{i}:1": "127.0.0.1:1" for i in range(17)}},
     "controlplane_via"),
])
def test_settings_errors_name_the_field(override, field):
    with pytest.raises(InvalidInput) as ei:
        load_settings(None, **override)
    assert ei.value.field == field


def test_settings_unknown_key_in_file_is_named(tmp_path):
    cfg = tmp_path / "a.json"
    cfg.write_text(json.dumps({"center": "c0", "report_intervall_s": 1}))
    with pytest.raises(InvalidInput) as ei:
        load_settings(cfg)
    assert ei.value.field == "report_intervall_s" and str(cfg) in str(ei.value)
    cfg.write_text("report_interval_s: fast\n")
    with pytest.raises(InvalidInput) as ei:
        load_settings(cfg, center="c0")
    assert ei.value.field == "report_interval_s" and ei.value.value == "fast"


# ---------------------------------------------------------------- simulated ACD


def _sim(**kw):
    return SimulatedACD(small_topology(), "c0", now=0.0, **kw)


def test_simulated_acd_is_seeded_and_reports_valid_loads():
    a, b = _sim(seed=3, time_scale=30), _sim(seed=3, time_scale=30)
    for i in range(1, 40):
        sa, sb = a.sample(i * 0.5), b.sample(i * 0.5)
        assert sa == sb
        validate_report(Report(center="c0", seq=i, sent_at=0.0, skills=sa), {"c0"})
    assert set(sa) == {"retail", "card"}


def test_simulated_acd_offered_rises_with_routed_calls():
    quiet, busy = _sim(seed=5, own_traffic=0.0), _sim(seed=5, own_traffic=0.0)
    q_off = b_off = 0
    for i in range(1, 21):
        busy.offer_routed({"retail": 10}, i * 0.5)
        q_off += quiet.sample(i * 0.5)["retail"].offered
        b_off += busy.sample(i * 0.5)["retail"].offered
    assert q_off == 0 and b_off == 200


def test_not_answering_grows_the_queue_and_answers_nothing():
    sim = _sim(seed=2, time_scale=60)
    sim.sample(1.0)
    sim.set_mode("not_answering")
    queued = []
    for i in range(2, 12):
        s = sim.sample(i * 0.5)["retail"]
        assert s.answered == 0 and s.ready == 0
        queued.append(s.queued + s.abandoned)
    assert sum(queued) > 0 and sim.sample(10.0)["retail"].queued > 0


def test_calls_not_arriving_drops_routed_calls():
    sim = _sim(seed=2, own_traffic=0.0)
    sim.set_mode("calls_not_arriving")
    sim.offer_routed({"retail": 50}, 1.0)
    assert sim.sample(1.0)["retail"].offered == 0


def test_overload_abandons_and_queue_is_bounded():
    sim = _sim(seed=1, time_scale=600, patience_s=30)
    total = {"offered": 0, "answered": 0, "abandoned": 0}
    for i in range(1, 30):
        sim.offer_routed({"card": 500}, i * 0.5)
        s = sim.sample(i * 0.5)["card"]
        total["offered"] += s.offered
        total["answered"] += s.answered
        total["abandoned"] += s.abandoned
        assert s.queued <= MAX_QUEUE
        assert s.answered_within <= s.answered
    assert total["abandoned"] > 0 and total["answered"] > 0


def test_shifts_change_logged_in_agents():
    sim = _sim(seed=1, time_scale=3600, start_hour=10)  # an hour per second
    day = sim.sample(0.1)["retail"].logged_in
    night = max(sim.sample(t)["retail"].logged_in for t in (13.0, 13.1))  # 23:00
    assert night < day


def test_long_pause_skips_ahead_instead_of_replaying_days():
    sim = _sim(seed=1, time_scale=1000)
    sim.sample(0.5)
    s = sim.sample(100_000.0)  # a paused process resumes much later
    assert s["retail"].offered < 10_000


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(0.01, 5), st.integers(0, 300)), min_size=1, max_size=20),
       st.sampled_from(["normal", "not_answering", "calls_not_arriving"]), st.integers(0, 9))
def test_simulated_reports_always_pass_validation(steps, mode, seed):
    sim = _sim(seed=seed, time_scale=50)
    sim.set_mode(mode)
    now = 0.0
    for i, (dt, n) in enumerate(steps):
        now += dt
        sim.offer_routed({"retail": n}, now)
        loads = sim.sample(now)
        validate_report(Report(center="c0", seq=i + 1, sent_at=0.0, skills=loads), {"c0"})
        for s in loads.values():
            assert s.ready + s.busy <= s.logged_in


def test_sim_switches_validate():
    sim = _sim()
    with pytest.raises(InvalidInput) as ei:
        sim.set_mode("on fire")
    assert ei.value.field == "mode"
    with pytest.raises(InvalidInput) as ei:
        sim.set_state("gone")
    assert ei.value.field == "state"
    sim.set_state("closed")
    assert sim.state is AdminState.CLOSED


# ---------------------------------------------------------------- push ACD


def _push(acd, obj, now=1.0):
    acd.push_json(obj if isinstance(obj, bytes) else json.dumps(obj).encode(), now)


def test_push_acd_sums_counters_and_keeps_latest_gauges():
    acd = PushACD("c0", now=0.0)
    assert acd.sample(0.5) is None  # nothing pushed yet: no invented report
    _push(acd, {"skills": {"retail": {"logged_in": 10, "ready": 2, "busy": 8, "offered": 5,
                                      "answered": 4, "answered_within": 3}}})
    _push(acd, {"skills": {"retail": {"logged_in": 11, "ready": 1, "busy": 9, "offered": 7,
                                      "answered": 6, "answered_within": 6}}, "state": "draining"})
    s = acd.sample(1.5)
    assert s["retail"].logged_in == 11 and s["retail"].offered == 12 and s["retail"].answered == 10
    assert acd.state is AdminState.DRAINING
    assert acd.sample(2.0)["retail"].offered == 0
    assert acd.sample(100.0) is None  # the ACD went quiet


def test_push_acd_holds_only_topology_skills_or_a_bounded_number_of_names():
    """B16: a pushing client cannot make the agent hold skill names without end."""
    known = PushACD("c0", now=0.0, known_skills=frozenset({"retail", "card"}))
    _push(known, {"skills": {"retail": {"logged_in": 1}}})
    with pytest.raises(InvalidInput) as e:
        _push(known, {"skills": {"retail": {"logged_in": 1}, "made-up": {"logged_in": 1}}})
    assert (e.value.field, e.value.value) == ("skills", "made-up") and known.rejected == 1
    assert set(known.sample(1.5)) == {"retail"}  # the refused message left nothing behind
    free = PushACD("c0", now=0.0, max_skills=2)
    _push(free, {"skills": {"a": {}, "b": {}}})
    _push(free, {"skills": {"b": {"logged_in": 3}}})  # a name already held is no new name
    with pytest.raises(InvalidInput) as e:
        _push(free, {"skills": {"c": {}}})
    assert (e.value.field, e.value.value) == ("skills", "c")
    assert set(free.sample(1.5)) == {"a", "b"}


@pytest.mark.parametrize("body,field", [
    ({"skills": {"retail": {"offered": -3}}}, "skills[retail].offered"),
    (b'{"skills": {"retail": {"oldest_wait_s": 1e400}}}', "skills[retail].oldest_wait_s"),
    ({"skills": {"retail": {"oldest_wait_s": -1.5}}}, "skills[retail].oldest_wait_s"),
    ({"skills": {"retail": {"offered": "many"}}}, "skills[retail].offered"),
    ({"skills": {"retail": {"ready": 5, "logged_in": 1}}}, "skills[retail].ready"),
    ({"skills": {"bad skill!": {}}}, "skills.key"),
    ({"skills": {"retail": {"answered": 1, "answered_within": 2}}}, "skills[retail].answered_within"),
    ({"state": "melted"}, "state"),
    ({"skills": {"retail": {"queud": 1}}}, "skills[retail].queud"),
    ({"skills": {f"s{i}": {} for i in range(300)}}, "skills"),
    ({"center": "c9"}, "center"),
    ([1, 2], "body"),
])
def test_push_acd_rejects_bad_input_naming_the_field(body, field):
    acd = PushACD("c0", now=0.0)
    with pytest.raises(InvalidInput) as ei:
        _push(acd, body)
    assert ei.value.field == field, str(ei.value)
    assert acd.rejected == 1 and acd.sample(1.0) is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_push_acd_random_bytes_only_invalid_input(raw):
    acd = PushACD("c0", now=0.0)
    try:
        acd.push_json(raw, 1.0)
    except InvalidInput:
        pass


# ---------------------------------------------------------------- sequence numbers


def test_seq_survives_restarts_and_reserves_blocks(tmp_path):
    a = SeqStore(tmp_path, block=100)
    taken = [a.take() for _ in range(250)]
    assert [seq for _, seq in taken] == list(range(1, 251))
    assert {inc for inc, _ in taken} == {a.incarnation}  # one process, one incarnation
    b = SeqStore(tmp_path, block=100)  # a restart (or a crash after any of those)
    inc, seq = b.take()
    assert seq > 250 and inc > a.incarnation
    assert int((tmp_path / "report_seq").read_text()) >= 250


def test_incarnation_supersedes_with_an_empty_state_dir_and_a_clock_gone_back(tmp_path, monkeypatch):
    # B14: a new pod (empty state dir) still takes a newer incarnation than its predecessor's
    old = SeqStore(tmp_path / "old")
    new = SeqStore(tmp_path / "new")
    assert new.incarnation > old.incarnation > 10**18  # nanoseconds since the epoch
    # with its state dir, a restart is above the last one even if the wall clock went back an hour
    real_ns = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real_ns() - 3600 * 10**9)
    again = SeqStore(tmp_path / "old")
    assert again.incarnation == old.incarnation + 1
    assert int((tmp_path / "old" / "report_incarnation").read_text()) == again.incarnation


def test_seq_at_the_top_rolls_into_a_new_incarnation(tmp_path):
    (tmp_path / "report_seq").write_text(str(2**64 - 3))
    s = SeqStore(tmp_path, block=100)
    first = s.incarnation
    assert [s.take() for _ in range(2)] == [(first, 2**64 - 2), (first, 2**64 - 1)]
    inc, seq = s.take()
    assert (seq, inc > first) == (1, True)


def test_a_stale_answer_renews_the_incarnation_once(tmp_path):
    s = SeqStore(tmp_path)
    first, seq = s.take()
    _, seq2 = s.take()
    s.stale(seq)
    renewed = s.incarnation
    assert renewed > first
    s.stale(seq2)  # another report of the old incarnation, still in flight: no new one
    assert s.incarnation == renewed
    inc, seq3 = s.take()
    assert inc == renewed and seq3 > seq2


def test_seq_corrupt_file_jumps_ahead(tmp_path):
    (tmp_path / "report_seq").write_text("garbage")
    assert SeqStore(tmp_path).take()[1] > 10**12


def test_routed_counter_swaps_whole_and_splits_into_routed_and_demand():
    c = RoutedCounter()
    c.counts[("b1", "retail", "c1")] = 3
    c.counts[("b2", "retail", "c1")] = 1
    c.counts[("b1", "retail", "")] = 2  # overload answers: demand, routed nowhere
    old = c.swap()
    assert c.counts == {}
    routed, demand = split_calls(old)
    assert routed == {("c1", "retail"): 4, ("", "retail"): 2}
    assert demand == {("b1", "retail"): 5, ("b2", "retail"): 1}


# ---------------------------------------------------------------- plan store and checks


def test_plan_store_round_trip_and_rejects_torn_files(tmp_path):
    topo = small_topology()
    plan = make_plan(topo, 7)
    store = PlanStore(tmp_path)
    assert store.load() is None
    store.save(plan)
    assert store.load() == plan
    raw = store.path.read_bytes()
    store.path.write_bytes(raw[: len(raw) // 2])  # torn write
    assert store.load() is None
    store.path.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))  # flipped bit
    assert store.load() is None
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_cache_check_refuses_old_and_inconsistent_plans():
    topo = small_topology()
    cache = PlanCache(topo)
    assert cache.check(make_plan(topo, 1)) == ""
    bad_route = Route("b0", "retail", (Target("nowhere", 1.0),), home="c0")
    bad = msgspec.structs.replace(make_plan(topo, 2), routes=(bad_route,) + make_plan(topo, 2).routes[1:])
    why = cache.check(bad)
    assert "nowhere" in why
    assert "version=0" in cache.check(make_plan(topo, 0))


def test_self_consistent_without_topology():
    topo = small_topology()
    plan = make_plan(topo, 3, closed=("c1",))
    assert self_consistent(plan) == []
    r = Route("b0", "retail", (Target("c1", 0.5), Target("c2", 0.2)), home="c0")
    errs = self_consistent(msgspec.structs.replace(plan, routes=(r,)))
    assert any("closed" in e for e in errs) and any("sum" in e for e in errs)


# ---------------------------------------------------------------- HTTP request handling


def _http_server(metrics=bytes, **kw):  # type: ignore[no-untyped-def]
    from agents.httpserver import HttpLookupServer, LookupEngine

    topo = small_topology()
    cache = PlanCache(topo)
    assert cache.offer(make_plan(topo, 1)) == ""
    eng = LookupEngine(cache, RoutedCounter())
    return HttpLookupServer(eng, health=dict, metrics=metrics, **kw), eng


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([b"branch", b"skill", b"caller", b"tier", b"x", b""]),
                          st.binary(max_size=40)), max_size=6))
def test_route_query_parsing_answers_200_or_400_naming_a_field(pairs):
    srv, eng = _http_server()
    query = b"&".join(k + b"=" + v for k, v in pairs)
    resp = srv.route_get(query)
    head, _, body = resp.partition(b"\r\n\r\n")
    if head.startswith(b"HTTP/1.1 200"):
        assert json.loads(body)["plan_version"] == 1
    else:
        assert head.startswith(b"HTTP/1.1 400")
        err = json.loads(body)
        assert err["field"] in {"branch", "skill", "caller", "tier", "query"} and "=" in err["error"]


def test_routed_counter_counts_each_answered_lookup():
    srv, eng = _http_server()
    for i in range(30):
        assert srv.route_get(b"branch=b0&skill=retail&caller=%d" % i).startswith(b"HTTP/1.1 200")
    srv.route_get(b"branch=nope&skill=retail")
    counts = eng.counter.swap()
    assert sum(counts.values()) == 30 and {(b, s) for b, s, _ in counts} == {("b0", "retail")}
    assert eng.stats.ok == 30 and eng.stats.bad == 1


def test_probe_lookups_answer_like_calls_but_are_not_counted_as_calls():
    """A monitor's (or the chaos harness's) probe asks what a switch would be told; it is no call: it
    must not count as a call routed (routed_to, simulated offers) nor as a branch's demand. The chaos
    harness's probes (40 a second in F8, batches of 1,000 in F17) were read as calls and moved the
    live demand of the branches probed (wuhan's load 253 -> 680 E) and saturated receivers."""
    srv, eng = _http_server()
    a = srv.route_get(b"branch=b0&skill=retail&caller=1")
    b = srv.route_get(b"branch=b0&skill=retail&caller=1&probe=1")
    assert a == b and a.startswith(b"HTTP/1.1 200")
    body = json.dumps([{"branch": "b0", "skill": "retail", "caller": str(i), "probe": True}
                       for i in range(5)]).encode()
    assert srv.routes_post(body).startswith(b"HTTP/1.1 200")
    assert sum(eng.counter.swap().values()) == 1
    assert srv.route_get(b"branch=b0&skill=retail&probe=yes").startswith(b"HTTP/1.1 400")


def test_seq_without_state_dir_starts_above_earlier_runs():
    assert SeqStore(None).take()[1] > 10**15


# ---------------------------------------------------------------- reporter against a fake control plane


async def test_reporter_cancels_a_stuck_stream_and_reconnects():
    """F11: a peer that takes reports but never answers is dropped within the ack deadline."""
    from test_agent_fakes import FakeControlPlane, apoll

    from agents.reporter import Reporter

    topo = small_topology()
    cp = await FakeControlPlane(topo).start()
    cp.mute = True
    rep = Reporter("c0", _sim(), RoutedCounter(), SeqStore(None), [cp.address], interval_s=0.05,
                   deadline_s=0.3, backoff_initial_s=0.01, backoff_max_s=0.05, seed=1)
    import asyncio

    task = asyncio.create_task(rep.run())
    try:
        await apoll(lambda: rep.reconnects >= 2, timeout_s=10, what="stuck stream dropped")
        assert "no ack" in rep.last_error
        cp.mute = False
        await apoll(lambda: len(cp.reports) >= 3, timeout_s=10, what="reports after unmuting")
        seqs = [r.seq for r in cp.reports]
        assert seqs == sorted(set(seqs))
    finally:
        rep.stop()
        await task
        await cp.stop()
    assert rep.state == "stopped"


def test_plan_age_counts_from_the_last_confirmation():
    topo = small_topology()
    now = [100.0]
    cache = PlanCache(topo, clock=lambda: now[0], confirm_by_stream=False)
    assert cache.offer(make_plan(topo, 3)) == ""
    assert cache.age() == 0.0
    now[0] += 5
    assert cache.age() == 5.0
    cache.confirm(3)  # a report ack: the leader's newest plan is ours
    assert cache.age() == 0.0
    now[0] += 2
    cache.confirm(4)  # the leader has a newer plan we do not serve yet: still ageing
    assert cache.age() == 2.0
    cache.set_live(True)  # stream liveness does not count in the agent
    assert cache.age() == 2.0
    client_cache = PlanCache(topo, clock=lambda: now[0])
    client_cache.set_live(True)
    assert client_cache.age() == 0.0


def test_ring_tables_kept_are_those_of_the_last_two_plans_only():
    """L5: a plan a second with live weights is a new weighted target set most seconds; the agent's
    ring tables (64 KiB each) must not pile up with every plan it ever served (+11.6% RSS in a
    2-minute soak), while a plan and the one before it (a rollback, a close then reopen) share them."""
    from controlplane.core.model import Route, Target

    topo = small_topology()
    cache = PlanCache(topo)
    base = make_plan(topo, 1)
    sizes = []
    for v in range(1, 41):
        # b0's DR weights change with every plan: c1 from 0.30 to 0.69
        w = round(0.3 + v / 100, 2)
        r0 = Route("b0", "retail", (Target("c1", w), Target("c2", round(1 - w, 2))), home="c0")
        plan = msgspec.structs.replace(base, version=v, routes=(r0,) + base.routes[1:])
        assert cache.offer(plan, persist=False) == ""
        sizes.append(len(cache._ring_cache))
    # the rings of the last plan (b0's and one per home center) and b0's of the two plans before
    assert max(sizes[5:]) <= len({tuple(t.center for t in r.targets) for r in plan.routes}) + 2
    assert sizes[-1] == sizes[-2], sizes
    # a route back to the weights of the plan before the served one reuses its table (no rebuild)
    misses = cache._ring_cache.misses
    r0 = Route("b0", "retail", (Target("c1", 0.69), Target("c2", 0.31)), home="c0")
    assert cache.offer(msgspec.structs.replace(base, version=41, routes=(r0,) + base.routes[1:]),
                       persist=False) == ""
    assert cache._ring_cache.misses == misses
