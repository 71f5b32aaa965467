"""Topology loading (B10), the example networks, and the synthetic large network."""

import copy
import datetime
import math
from pathlib import Path

import msgspec
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.core.erlang import service_level
from controlplane.core.model import AdminState, InvalidInput, NetworkView, RouteKind, Topology
from controlplane.core.plan import consistent
from controlplane.core.planner import PlanTracker, compute_plan, effective_home
from controlplane.core.topology import (
    TopologyError,
    check_topology,
    dump_topology,
    load_topology,
    parse_topology,
    parse_topology_text,
    topology_hash,
)
from devtools.synth import synth_topology

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NATIONAL = EXAMPLES / "national.yaml"
SMALL = EXAMPLES / "small.yaml"


@pytest.fixture(scope="module")
def national() -> Topology:
    return load_topology(NATIONAL)


@pytest.fixture(scope="module")
def small() -> Topology:
    return load_topology(SMALL)


def _min_agents(a: float, aht: float) -> int:
    n = max(1, math.ceil(a))
    while service_level(n, a, aht, 20) < 0.80:
        n += 1
    return n


# ---------------------------------------------------------------- the national example


def test_national_shape(national):
    t = national
    assert len(t.centers) == 9
    assert 35 <= len(t.branches) <= 40
    hosted = {c: sorted(b.id for b in t.branches if b.home == c) for c in t.center_ids()}
    assert len(hosted["chengdu"]) == 13
    assert hosted["wuhan"] == ["hubei", "hunan"]
    assert all(hosted[c] for c in t.center_ids()), "every center hosts a branch"
    for big in ("guangdong", "jiangsu", "zhejiang", "shandong", "sichuan"):
        assert next(b for b in t.branches if b.id == big).calls_per_hour["retail"] >= 2000
    for tiny in ("xizang", "qinghai", "ningxia"):
        assert next(b for b in t.branches if b.id == tiny).calls_per_hour["retail"] <= 500
    skills = set(t.skills())
    assert {"retail", "credit_card", "corporate", "vip_wealth", "local_products"} <= skills
    assert t.policy.aht_s == {"retail": 240, "credit_card": 300, "corporate": 360, "vip_wealth": 420,
                              "local_products": 300}
    assert t.policy.service_level.target == 0.80 and t.policy.service_level.answer_within_s == 20
    assert t.policy.dr_receivers == 8
    pinned = {s for b in t.branches for s in b.pinned}
    assert pinned == {"local_products"}
    # local_products is pinned wherever it is called for
    assert all("local_products" in b.pinned for b in t.branches if "local_products" in b.calls_per_hour)
    for s in skills - pinned:
        staffed = [c.id for c in t.centers if c.agents.get(s, 0) > 0]
        assert len(staffed) >= 9, (s, staffed)
    # chengdu is the largest center
    size = {c.id: sum(c.agents.values()) for c in t.centers}
    assert max(size, key=lambda c: size[c]) == "chengdu"
    # a night schedule hosted by chengdu
    night = [b for b in t.branches if b.schedule]
    assert night and all(r.host == "chengdu" and r.hours == (22, 8) for b in night for r in b.schedule)


def test_national_meets_service_level_with_realistic_headroom(national):
    t = national
    load: dict[tuple[str, str], float] = {}
    for b in t.branches:
        for s, cph in b.calls_per_hour.items():
            load[(b.home, s)] = load.get((b.home, s), 0.0) + cph * t.aht(s) / 3600
    for c in t.centers:
        for s, n in c.agents.items():
            a = load[(c.id, s)]
            assert service_level(n, a, t.aht(s), 20) >= 0.80, (c.id, s)
            headroom = n / _min_agents(a, t.aht(s)) - 1
            # 10-25%; rounding up a team of a dozen can add a little more
            assert 0.10 <= headroom <= (0.25 if n >= 20 else 0.30), (c.id, s, n, headroom)
    plan = compute_plan(t)
    assert plan.feasible and consistent(plan, t) == []
    assert {r.kind for r in plan.routes} <= {RouteKind.HOME, RouteKind.PINNED}
    assert all(p.service_level >= 0.80 for skills in plan.receivers.values() for p in skills.values())


def test_national_absorbs_wuhan_closure(national):
    t = national
    plan = compute_plan(t, NetworkView(admin={"wuhan": AdminState.CLOSED}))
    assert consistent(plan, t) == []
    assert plan.feasible, plan.infeasible_reasons
    assert plan.closed == ("wuhan",)
    for r in plan.routes:
        assert all(tg.center != "wuhan" for tg in r.targets)
        if r.branch in ("hubei", "hunan") and r.skill != "local_products":
            assert r.kind == RouteKind.DR and len(r.targets) == 8, r
    assert all(p.service_level >= 0.80 for skills in plan.receivers.values() for p in skills.values())


def test_national_night_hosting_is_feasible(national):
    t = national
    ningxia = next(b for b in t.branches if b.id == "ningxia")
    assert effective_home(ningxia, 23.0, 3) == "chengdu"
    assert effective_home(ningxia, 12.0, 3) == "lanzhou"
    plan = PlanTracker(t).compute(NetworkView(), 0.0, 1, wall_hour=23.0)
    assert plan.feasible and consistent(plan, t) == []
    assert {r.home for r in plan.routes if r.branch == "ningxia"} == {"chengdu"}


def test_small_example_survives_any_one_closure(small):
    t = small
    assert sorted(t.center_ids()) == ["north", "south", "west"]
    assert len(t.branches) == 6 and len(t.skills()) == 3
    assert t.policy.dr_receivers == 2
    for c in (None, "north", "south", "west"):
        plan = compute_plan(t, NetworkView(admin={c: AdminState.CLOSED} if c else {}))
        assert consistent(plan, t) == []
        assert plan.feasible, (c, plan.infeasible_reasons)


# ---------------------------------------------------------------- B10: broken documents

BASE = {
    "policy": {"service_level": {"target": 0.8, "answer_within_s": 20}, "dr_receivers": 2,
               "aht_s": {"retail": 240, "card": 300, "local": 300}},
    "centers": [
        {"id": "beijing", "region": "north", "agents": {"retail": 50, "card": 20, "local": 5}},
        {"id": "wuhan", "region": "central", "agents": {"retail": 40, "card": 15}},
        {"id": "chengdu", "region": "southwest", "agents": {"retail": 60, "card": 25}},
    ],
    "branches": [
        {"id": "hebei", "home": "beijing", "calls_per_hour": {"retail": 300, "card": 100, "local": 20},
         "pinned": ["local"]},
        {"id": "hubei", "home": "wuhan", "calls_per_hour": {"retail": 250, "card": 80}},
        {"id": "sichuan", "home": "chengdu", "calls_per_hour": {"retail": 400, "card": 120},
         "schedule": [{"host": "beijing", "hours": [22, 8], "days": [6, 7]}]},
        {"id": "hunan", "home": "wuhan", "calls_per_hour": {"retail": 200, "card": 60}},
    ],
}


def _doc() -> dict:
    return copy.deepcopy(BASE)


def _at(d, path: str):
    """(container, key) for a dotted path with integer list indexes: 'branches.1.home'."""
    parts = [int(p) if p.isdigit() else p for p in path.split(".")]
    for p in parts[:-1]:
        d = d[p]
    return d, parts[-1]


def _set(path: str, value):
    def f(d):
        c, k = _at(d, path)
        c[k] = value
        return d
    return f


def _del(path: str):
    def f(d):
        c, k = _at(d, path)
        del c[k]
        return d
    return f


def _seq(*fs):
    def f(d):
        for g in fs:
            d = g(d)
        return d
    return f


# (name, mutation of BASE, field path in the message, value as shown in the message)
DATA_CASES = [
    ("unknown home", _set("branches.1.home", "wuhna"), "branches[1].home", "'wuhna'"),
    ("unknown schedule host", _set("branches.2.schedule.0.host", "chengduu"), "branches[2].schedule[0].host",
     "'chengduu'"),
    ("duplicate center", _set("centers.2.id", "wuhan"), "centers[2].id", "'wuhan'"),
    ("duplicate branch", _set("branches.3.id", "hubei"), "branches[3].id", "'hubei'"),
    ("bad center id", _set("centers.0.id", "bei jing"), "centers[0].id", "'bei jing'"),
    ("empty branch id", _set("branches.0.id", ""), "branches[0].id", "''"),
    ("bad skill id", _set("centers.1.agents", {"re tail": 3}), "centers[1].agents['re tail']", "'re tail'"),
    ("negative agents", _set("centers.0.agents.retail", -3), "centers[0].agents.retail", "-3"),
    ("huge agents", _set("centers.0.agents.retail", 10**9), "centers[0].agents.retail", "1000000000"),
    ("float agents", _set("centers.0.agents.card", 1.5), "centers[0].agents.card", "1.5"),
    ("bool agents", _set("centers.2.agents.retail", True), "centers[2].agents.retail", "True"),
    ("string calls", _set("branches.3.calls_per_hour.retail", "many"), "branches[3].calls_per_hour.retail",
     "'many'"),
    ("NaN calls", _set("branches.1.calls_per_hour.card", math.nan), "branches[1].calls_per_hour.card", "nan"),
    ("inf calls", _set("branches.1.calls_per_hour.retail", math.inf), "branches[1].calls_per_hour.retail",
     "inf"),
    ("negative calls", _set("branches.0.calls_per_hour.retail", -5), "branches[0].calls_per_hour.retail",
     "-5.0"),
    ("unstaffed skill", _set("branches.3.calls_per_hour.mortgage", 10), "branches[3].calls_per_hour.mortgage",
     "10.0"),
    ("pinned not called", _set("branches.1.pinned", ["local"]), "branches[1].pinned[0]", "'local'"),
    ("pinned at unstaffed home", _seq(_set("branches.1.calls_per_hour.local", 5), _set("branches.1.pinned",
                                                                                        ["local"])),
     "branches[1].pinned[0]", "'local'"),
    ("pinned twice", _set("branches.0.pinned", ["local", "local"]), "branches[0].pinned[1]", "'local'"),
    ("hour 25", _set("branches.2.schedule.0.hours", [22, 25]), "branches[2].schedule[0].hours[1]", "25"),
    ("hour -1", _set("branches.2.schedule.0.hours", [-1, 8]), "branches[2].schedule[0].hours[0]", "-1"),
    ("empty hours", _set("branches.2.schedule.0.hours", [8, 8]), "branches[2].schedule[0].hours", "[8, 8]"),
    ("three hours", _set("branches.2.schedule.0.hours", [1, 2, 3]), "branches[2].schedule[0].hours",
     "[1, 2, 3]"),
    ("day 8", _set("branches.2.schedule.0.days", [6, 8]), "branches[2].schedule[0].days[1]", "8"),
    ("day 0", _set("branches.2.schedule.0.days", [0]), "branches[2].schedule[0].days[0]", "0"),
    ("target 1", _set("policy.service_level.target", 1.0), "policy.service_level.target", "1.0"),
    ("target 0", _set("policy.service_level.target", 0), "policy.service_level.target", "0.0"),
    ("answer_within 0", _set("policy.service_level.answer_within_s", 0),
     "policy.service_level.answer_within_s", "0.0"),
    ("dr_receivers 0", _set("policy.dr_receivers", 0), "policy.dr_receivers", "0"),
    ("dr_receivers text", _set("policy.dr_receivers", "eight"), "policy.dr_receivers", "'eight'"),
    ("exit ewt above enter", _set("policy.overflow", {"enter_ewt_s": 30, "exit_ewt_s": 40}),
     "policy.overflow.exit_ewt_s", "40.0"),
    ("exit sl below enter", _set("policy.overflow", {"enter_sl": 0.7, "exit_sl": 0.6}),
     "policy.overflow.exit_sl", "0.6"),
    ("vip exit above enter", _set("policy.overflow", {"vip_enter_ewt_s": 60, "vip_exit_ewt_s": 60}),
     "policy.overflow.vip_exit_ewt_s", "60.0"),
    ("max_share 0", _set("policy.overflow", {"max_share": 0}), "policy.overflow.max_share", "0.0"),
    ("max_share 1.5", _set("policy.overflow", {"max_share": 1.5}), "policy.overflow.max_share", "1.5"),
    ("receivers 0", _set("policy.overflow", {"receivers": 0}), "policy.overflow.receivers", "0"),
    ("aht 0", _set("policy.aht_s.card", 0), "policy.aht_s.card", "0.0"),
    ("aht nan", _set("policy.aht_s.card", math.nan), "policy.aht_s.card", "nan"),
    ("aht typo", _set("policy.aht_s.retial", 240), "policy.aht_s.retial", "240.0"),
    ("default aht negative", _set("policy.default_aht_s", -1), "policy.default_aht_s", "-1.0"),
    ("overload action", _set("policy.overload_action", "shout"), "policy.overload_action", "'shout'"),
    ("no centers", _set("centers", []), "centers", "[]"),
    ("no branches", _set("branches", []), "branches", "[]"),
    ("centers not a list", _set("centers", "beijing"), "centers", "'beijing'"),
    ("unknown top key", _set("polcy", {}), "polcy", "{}"),
    ("unknown center key", _set("centers.1.agent", {"retail": 3}), "centers[1].agent", "{'retail': 3}"),
    ("unknown policy key", _set("policy.service_level.within", 20), "policy.service_level.within", "20"),
    ("missing home", _del("branches.2.home"), "branches[2].home", "<missing>"),
    ("missing centers", _del("centers"), "centers", "<missing>"),
    ("non-string skill key", _set("centers.0.agents", {7: 3}), "centers[0].agents", "7"),
    ("date instead of id", _set("branches.0.id", datetime.date(2020, 1, 23)), "branches[0].id",
     "datetime.date(2020, 1, 23)"),
]


@pytest.mark.parametrize(("mutate", "field", "shown"), [c[1:] for c in DATA_CASES],
                         ids=[c[0] for c in DATA_CASES])
def test_broken_document_names_file_field_and_value(tmp_path, mutate, field, shown):
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(mutate(_doc()), sort_keys=False))
    with pytest.raises(TopologyError) as ei:
        load_topology(path)
    e = ei.value
    msg = str(e)
    assert isinstance(e, InvalidInput)
    assert msg.startswith(f"{path}: "), msg
    assert f": {field}={shown}: " in msg, msg
    assert e.field == field and e.source == str(path)
    assert e.why and e.why in msg


def test_messages_are_helpful():
    with pytest.raises(TopologyError, match=r"unknown center \(did you mean 'wuhan'\? known: beijing, "
                                            r"chengdu, wuhan\)"):
        parse_topology(_set("branches.1.home", "wuhna")(_doc()), "x.yaml")
    with pytest.raises(TopologyError, match=r"unknown field \(known: id, region, agents, address, tz\)"):
        parse_topology(_set("centers.1.agent", {})(_doc()), "x.yaml")
    with pytest.raises(TopologyError, match=r"no center staffs skill 'mortgage'"):
        parse_topology(_set("branches.3.calls_per_hour.mortgage", 10)(_doc()), "x.yaml")
    with pytest.raises(TopologyError, match=r"duplicate center id \(first at centers\[1\]\)"):
        parse_topology(_set("centers.2.id", "wuhan")(_doc()), "x.yaml")


# (name, YAML text, field in the message, value shown, why contains)
TEXT_CASES = [
    ("unclosed brace", "centers:\n  - {id: a, agents: {retail: 3}\nbranches: []\n", "line 3",
     "'branches: []'", "invalid YAML at column 1"),
    ("tab indentation", "centers:\n\t- id: x\n", "line 2", "'- id: x'", "invalid YAML"),
    ("duplicate key", "centers:\n  - id: a\n    agents: {retail: 3, retail: 4}\nbranches: []\n", "line 3",
     "'agents: {retail: 3, retail: 4}'", "duplicate key 'retail' (first at line 3)"),
    ("duplicate top key", "centers: []\nbranches: []\ncenters: []\n", "line 3", "'centers: []'",
     "duplicate key 'centers' (first at line 1)"),
    ("unhashable key", "? [a, b]\n: 1\n", "line", None, "list or mapping used as a key"),
    ("empty file", "", "(document)", "None", "must be a mapping"),
    ("only a comment", "# nothing here\n", "(document)", "None", "must be a mapping"),
    ("top-level list", "- centers\n- branches\n", "(document)", "['centers', 'branches']",
     "must be a mapping"),
    ("scalar", "hello\n", "(document)", "'hello'", "must be a mapping"),
    ("python tag", "centers: !!python/object:os.system {}\n", "line 1", None, "invalid YAML"),
]


@pytest.mark.parametrize(("text", "field", "shown", "why"), [c[1:] for c in TEXT_CASES],
                         ids=[c[0] for c in TEXT_CASES])
def test_broken_yaml_names_file_line_and_text(tmp_path, text, field, shown, why):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(TopologyError) as ei:
        load_topology(path)
    msg = str(ei.value)
    assert msg.startswith(f"{path}: {field}"), msg
    if shown is not None:
        assert f"={shown}: " in msg, msg
    assert why in msg


def test_file_level_errors(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(TopologyError, match=rf"^{missing}: file=.*cannot read"):
        load_topology(missing)
    with pytest.raises(TopologyError, match="cannot read"):
        load_topology(tmp_path)  # a directory
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes(b"centers:\n  - id: caf\xe9\n")
    with pytest.raises(TopologyError, match=rf"^{latin}: line 2=.*not UTF-8"):
        load_topology(latin)


def test_error_message_values_are_bounded():
    doc = _set("centers", "x" * 100_000)(_doc())
    with pytest.raises(TopologyError) as ei:
        parse_topology(doc, "big.yaml")
    assert len(str(ei.value)) < 400


# ---------------------------------------------------------------- properties: never another exception

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["beijing", "wuhan", "chengdu", "retail", "card", "local", "", "callback", "22"]))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner,
                                                 max_size=4)), max_leaves=8)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _mutate(doc, path, op, value):
    if not path:
        return value if op == "replace" else doc
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    k = path[-1]
    if op == "replace":
        parent[k] = value
    elif op == "delete":
        del parent[k]
    elif op == "add" and isinstance(parent[k], dict):
        parent[k]["x_" + str(value)[:8]] = value
    elif op == "add" and isinstance(parent[k], list):
        parent[k].append(value)
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_mutations_load_or_raise_topology_error(data):
    doc = _doc()
    n_mutations = data.draw(st.integers(1, 3))
    for _ in range(n_mutations):
        paths = list(_paths(doc))
        path = data.draw(st.sampled_from(paths))
        op = data.draw(st.sampled_from(["replace", "delete", "add"]))
        doc = _mutate(doc, path, op, data.draw(_values))
    for attempt in ("data", "yaml"):
        try:
            if attempt == "data":
                t = parse_topology(doc, "mutated.yaml")
            else:
                try:
                    text = yaml.safe_dump(doc)
                except yaml.YAMLError:
                    continue
                t = parse_topology_text(text, "mutated.yaml")
        except TopologyError as e:
            assert str(e).startswith("mutated.yaml: ")
            continue
        # what loads is complete and valid: it round-trips and plans consistently
        check_topology(t)
        assert consistent(compute_plan(t), t) == []


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_random_text_edits_load_or_raise_topology_error(data):
    text = SMALL.read_text()
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(text)))
        j = data.draw(st.integers(i, min(len(text), i + 20)))
        text = text[:i] + data.draw(st.text(alphabet=st.characters(codec="utf-8"), max_size=6)
                                    | st.sampled_from(["[", "]", "{", ":", "- ", "\t", "\n", "&a", "*a",
                                                       "!!", "'", "-1", ".nan", "  "])) + text[j:]
    try:
        parse_topology_text(text, "edited.yaml")
    except TopologyError as e:
        assert str(e).startswith("edited.yaml: ")


# ---------------------------------------------------------------- hash and round trip


def test_topology_hash_is_stable_and_content_based(small):
    h = topology_hash(small)
    assert len(h) == 16 and int(h, 16) >= 0
    assert topology_hash(load_topology(SMALL)) == h
    # dict order in the file does not matter
    doc = yaml.safe_load(SMALL.read_text())
    doc["centers"][0]["agents"] = dict(reversed(list(doc["centers"][0]["agents"].items())))
    doc["policy"] = dict(reversed(list(doc["policy"].items())))
    assert topology_hash(parse_topology(doc, "reordered")) == h
    # any content change does
    doc["centers"][0]["agents"]["retail"] += 1
    assert topology_hash(parse_topology(doc, "changed")) != h


def test_dump_round_trips(national, small):
    for t in (national, small, synth_topology(5, 30, 4, seed=3)):
        text = dump_topology(t)
        back = parse_topology_text(text, "dumped")
        assert back == t
        assert topology_hash(back) == topology_hash(t)
        assert msgspec.json.encode(back) == msgspec.json.encode(t)


# ---------------------------------------------------------------- synthetic networks


def test_synth_is_deterministic_and_sized():
    # its speed is a benchmark's business (bench core), not a timed test's on a shared machine
    big = synth_topology(200, 2000, 20, seed=1)
    assert len(big.centers) == 200 and len(big.branches) == 2000 and len(big.skills()) == 20
    assert len(set(big.center_ids())) == 200 and len({b.id for b in big.branches}) == 2000
    assert topology_hash(synth_topology(200, 2000, 20, seed=1)) == topology_hash(big)
    assert synth_topology(200, 2000, 20, seed=2) != big
    # every center hosts branches and staffs most skills
    homes = {b.home for b in big.branches}
    assert homes == set(big.center_ids())
    assert all(len(c.agents) >= 0.5 * 20 for c in big.centers)
    check_topology(big)


def test_synth_is_feasible_normally_and_with_one_center_closed():
    t = synth_topology(20, 200, 8, seed=7)
    for view in (NetworkView(), NetworkView(admin={t.centers[0].id: AdminState.CLOSED})):
        plan = compute_plan(t, view)
        assert consistent(plan, t) == []
        assert plan.feasible, plan.infeasible_reasons


@pytest.mark.parametrize(("args", "field"), [((0, 10, 3), "centers"), ((3, 0, 3), "branches"),
                                             ((3, 10, 0), "skills"), ((3, 10, 10_000), "skills"),
                                             ((2.5, 10, 3), "centers")])
def test_synth_rejects_nonsense_sizes(args, field):
    with pytest.raises(InvalidInput) as ei:
        synth_topology(*args)
    assert ei.value.field == field


def test_synth_tiny_networks_are_valid():
    for c, b, s in ((1, 1, 1), (2, 1, 2), (3, 50, 3)):
        t = synth_topology(c, b, s, seed=c * 100 + b)
        check_topology(t)
        assert consistent(compute_plan(t), t) == []


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=70))
def test_check_id_takes_letters_digits_dash_underscore_dot(v: str) -> None:
    """check_id's regex is the per-character rule it replaced: str.isalnum() (any script) or - _ ."""
    from controlplane.core.model import MAX_ID_LEN, check_id

    ok = bool(v) and len(v) <= MAX_ID_LEN and all(ch.isalnum() or ch in "-_." for ch in v)
    try:
        check_id("branches[0].id", v)
    except InvalidInput as e:
        assert not ok and e.field == "branches[0].id"
    else:
        assert ok
