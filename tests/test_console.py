"""The web console's server side without a browser: login and roles against a real control plane
(operator tokens), the session cookie's flags, CSRF and role checks on actions, bad input named,
bounded sessions and bodies, and the listener's TLS rule. The browser test is test_console_e2e.py."""

from __future__ import annotations

import subprocess
import sys

import pytest
from starlette.testclient import TestClient

from bench.console_latency import ROOT, running
from controlplane.cli.client import OperatorClient
from controlplane.console import app as console_app
from controlplane.console.app import COOKIE, Console, build_app
from controlplane.service.auth import Role


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    with running(tmp_path_factory.mktemp("console-cp"), agents=(), console=False) as s:
        yield s


def make_client(stage, secure: bool = False) -> tuple[Console, TestClient]:
    console = Console(OperatorClient([stage.cp]), secure_cookie=secure)
    return console, TestClient(build_app(console), base_url="https://testserver" if secure else "http://testserver")


def logged_in(stage, name: str, secure: bool = False) -> tuple[Console, TestClient]:
    console, client = make_client(stage, secure)
    r = client.post("/login", data={"token": stage.tokens[name]}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return console, client


def audit_size(console: Console, stage) -> int:
    from callroute.v1 import operator_pb2

    c = console.client_for(stage.tokens["alice"])
    return len(c.call("Audit", operator_pb2.AuditRequest(limit=10_000)).entries)


def test_login_learns_the_role_from_the_token_and_sets_a_strict_cookie(stage):
    console, client = make_client(stage)
    before = audit_size(console, stage)
    r = client.post("/login", data={"token": stage.tokens["alice"]}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"].lower()
    assert f"{COOKIE}=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    assert "secure" not in cookie  # plain HTTP on loopback: a Secure cookie would never come back
    (s,) = console.sessions.values()
    assert s.role == Role.OPERATOR
    # the token is never in a page, only in this process
    assert stage.tokens["alice"] not in client.get("/").text
    # learning the role stored nothing: the probes are refused before any write
    assert audit_size(console, stage) == before

    console, _ = logged_in(stage, "victor", secure=True)
    assert next(iter(console.sessions.values())).role == Role.VIEWER
    _, tls_client = make_client(stage, secure=True)
    r = tls_client.post("/login", data={"token": stage.tokens["bob"]}, follow_redirects=False)
    assert "secure" in r.headers["set-cookie"].lower()


def test_a_wrong_token_is_refused_and_pages_need_a_session(stage):
    _, client = make_client(stage)
    r = client.post("/login", data={"token": "not-a-token"})
    assert r.status_code == 401 and "UNAUTHENTICATED" in r.text
    assert client.post("/login", data={"token": ""}).status_code == 400
    # another site's page cannot log a browser in with its own token (login CSRF)
    r = client.post("/login", data={"token": stage.tokens["alice"]}, headers={"origin": "http://evil.example"})
    assert r.status_code == 403 and "origin" in r.text
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert client.get("/events?view=network").status_code == 401
    assert client.post("/act/state", data={"center": "wuhan"}).status_code == 401


def test_actions_need_the_role_and_the_csrf_token_and_name_bad_fields(stage):
    console, client = logged_in(stage, "alice")
    csrf = next(iter(console.sessions.values())).csrf
    good = {"center": "chengdu", "state": "drain", "reason": "test", "csrf": csrf}
    r = client.post("/act/state", data={**good, "csrf": ""})
    assert r.status_code == 403 and "CSRF" in r.text
    assert client.post("/act/state", data={**good, "csrf": csrf[:-1] + "x"}).status_code == 403
    for field, value in (("reason", "  "), ("state", "explode"), ("center", "atlantis"), ("center", "")):
        r = client.post("/act/state", data={**good, field: value})
        assert r.status_code == 400 and field in r.text, (field, r.status_code, r.text[-500:])
    r = client.post("/act/state", data={**good, "reason": "x" * 2000})
    assert r.status_code == 400 and "reason" in r.text
    # a body far beyond any form of the console is refused before it is read
    r = client.post("/act/state", content=b"a=" + b"x" * (console_app.MAX_BODY + 1),
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413
    # an admin-only action from an operator is refused by the console itself
    r = client.post("/act/rollback", data={"version": "1", "reason": "test", "csrf": csrf})
    assert r.status_code == 403

    viewer, vclient = logged_in(stage, "victor")
    vcsrf = next(iter(viewer.sessions.values())).csrf
    for path in ("/act/state", "/act/approve", "/act/refuse", "/act/drill", "/act/abort", "/act/rollback"):
        assert vclient.post(path, data={**good, "csrf": vcsrf}).status_code == 403, path
    assert 'data-action' not in vclient.get("/").text


def test_responses_forbid_framing_and_foreign_scripts(stage):
    _, client = make_client(stage)
    r = client.get("/login")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert client.get("/static/htmx.min.js").status_code == 200  # shipped, no CDN


def test_sessions_are_bounded_oldest_first(monkeypatch):
    monkeypatch.setattr(console_app, "MAX_SESSIONS", 3)
    console = Console(OperatorClient(["127.0.0.1:1"]), secure_cookie=False)
    made = [console.new_session(console.client_for("t"), Role.VIEWER).sid for _ in range(5)]
    assert list(console.sessions) == made[2:]


@pytest.mark.parametrize("argv, field", [
    (["--listen", "0.0.0.0:7480"], "--listen"),
    (["--listen", "192.0.2.1:7480"], "--listen"),
    (["--listen", "127.0.0.1:7480", "--tls-cert", "x.pem"], "--tls-key"),
])
def test_console_refuses_plain_http_off_loopback(argv, field):
    cmd = [sys.executable, "-m", "controlplane.cli", "console", "--endpoint", "127.0.0.1:1", *argv]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and field in r.stderr, r.stderr


def test_read_pages_and_a_dry_run_drill(stage):
    console, client = logged_in(stage, "alice")
    csrf = next(iter(console.sessions.values())).csrf
    r = client.get("/plan")
    assert r.status_code == 200 and 'id="predictions"' in r.text and "chengdu" in r.text
    r = client.get("/explain?branch=hubei&skill=retail&caller=13800138000")
    assert r.status_code == 200 and "plan v" in r.text and "wuhan" in r.text
    r = client.get("/explain?branch=hubei&skill=&caller=1")
    assert r.status_code == 400 and "skill" in r.text
    r = client.get("/history")
    assert r.status_code == 200 and "/plan?version=1" in r.text
    r = client.get("/history?from=1&to=0")
    assert r.status_code == 200 and 'id="diff"' in r.text
    assert client.get("/history?from=x").status_code == 400

    # a dry run changes no route: the console answers with the drill and lists it on /drills
    r = client.post("/act/drill", data={"center": "wuhan", "mode": "dry_run", "ramp": "10,50", "step_s": "60",
                                        "duration_s": "120", "abort_if_sl_below": "0.7",
                                        "reason": "quarterly <b>drill</b>", "csrf": csrf, "next": "/drills"})
    assert r.status_code == 200 and "dry_run drill of wuhan: APPLIED" in r.text, r.text[-1500:]
    assert client.post("/act/drill", data={"center": "wuhan", "mode": "dry_run", "ramp": "ten",
                                           "reason": "x", "csrf": csrf}).status_code == 400
    # the audit search finds it, with the reason escaped
    r = client.get("/audit?q=quarterly")
    assert "quarterly &lt;b&gt;drill&lt;/b&gt;" in r.text and "<b>drill</b>" not in r.text
    assert "no entry" in client.get("/audit?q=no-such-thing-anywhere").text
    # the drills page lists the control plane's drills (ListDrills), not only this session's
    r = client.get("/drills")
    assert r.status_code == 200 and 'id="drills-table"' in r.text


def test_refuse_from_the_console_is_audited_and_needs_a_reason(stage):
    console, client = logged_in(stage, "alice")
    csrf = next(iter(console.sessions.values())).csrf
    r = client.post("/act/state", data={"center": "lanzhou", "state": "drain",
                                        "reason": "console refuse test", "csrf": csrf, "next": "/pending"})
    assert r.status_code == 200 and "PENDING" in r.text, r.text[-1500:]
    rid = r.text.split("(request ", 1)[1].split(")", 1)[0]
    r = client.post("/act/refuse", data={"request_id": rid, "reason": " ", "csrf": csrf})
    assert r.status_code == 400
    bob, bclient = logged_in(stage, "bob")
    bcsrf = next(iter(bob.sessions.values())).csrf
    r = bclient.post("/act/refuse", data={"request_id": rid, "reason": "not now", "csrf": bcsrf,
                                          "next": "/pending"})
    assert r.status_code == 200 and f"refused {rid}: NOT applied" in r.text, r.text[-1500:]
    assert rid not in bclient.get("/pending").text
    r = bclient.post("/act/approve", data={"request_id": rid, "csrf": bcsrf})
    assert r.status_code == 409 and "refused by bob" in r.text


def test_the_network_view_shows_each_broken_path_as_text():
    # issue 16, F21: a center's broken DR paths (ListCenters.broken_paths) are what an operator must
    # see at a glance during DR; the reason a peer's probe gave is shown as text, never as markup
    from callroute.v1 import operator_pb2

    console = Console(OperatorClient(["127.0.0.1:1"]), secure_cookie=False)
    centers = operator_pb2.ListCentersReply(plan_version=3, centers=[operator_pb2.CenterInfo(
        center="north", region="n", reason="",
        broken_paths=["west broken since 10:00:00 (12 s): entry <b>not</b> accepting calls"])])
    html = console.env.get_template("live_network.html").render(
        s=None, centers=centers, pending=[], plan=None, moved=[], shares={}, view="network")
    row = html.split('data-center="north"', 1)[1].split("</tr>", 1)[0]
    assert 'class="path-broken bad"' in row
    assert "path to west broken since 10:00:00 (12 s): entry &lt;b&gt;not&lt;/b&gt; accepting calls" in row


# ---------------------------------------------------------------- emergency overrides (issues 18 and 21)


def test_an_emergency_set_and_cleared_from_the_console_is_audited_under_the_token(stage):
    console, client = logged_in(stage, "alice")
    csrf = next(iter(console.sessions.values())).csrf
    good = {"branch": "hubei", "skill": "", "host": "chengdu", "until": "2h", "csrf": csrf,
            "reason": "lockdown <b>now</b>", "next": "/emergency"}
    # bad fields are named before anything is stored; the control plane names what it refuses
    for field, value, status in (("until", "2020-01-24T08:00", 400), ("until", "soon", 400),
                                 ("host", "", 400), ("branch", "a b", 400), ("branch", "atlantis", 400),
                                 ("reason", " ", 400)):
        r = client.post("/act/emergency", data={**good, field: value})
        assert r.status_code == status and field in r.text, (field, value, r.status_code, r.text[-600:])
    r = client.post("/act/emergency", data=good)
    # no second operator: an emergency acts at once (service/emergency.py says why)
    assert r.status_code == 200 and "emergency hubei -&gt; chengdu: APPLIED" in r.text, r.text[-1500:]
    row = r.text.split('data-emergency="hubei"', 1)[1].split("</tr>", 1)[0]
    assert "<td>chengdu</td>" in row and "<td>alice</td>" in row
    assert "lockdown &lt;b&gt;now&lt;/b&gt;" in row and "<b>now</b>" not in row
    assert "until cleared" not in row  # it ends in 2 h

    viewer, vclient = logged_in(stage, "victor")
    vcsrf = next(iter(viewer.sessions.values())).csrf
    page = vclient.get("/emergency").text
    assert 'data-emergency="hubei"' in page and "data-action" not in page
    for path in ("/act/emergency", "/act/emergency/clear"):
        assert vclient.post(path, data={**good, "csrf": vcsrf}).status_code == 403, path

    r = client.post("/act/emergency/clear", data={"branch": "hubei", "skill": "", "reason": "lifted",
                                                   "csrf": csrf, "next": "/emergency"})
    assert r.status_code == 200 and "clear emergency hubei: APPLIED" in r.text, r.text[-1500:]
    assert 'data-emergency="hubei"' not in r.text
    from callroute.v1 import operator_pb2

    entries = console.client_for(stage.tokens["alice"]).call(
        "Audit", operator_pb2.AuditRequest(limit=10_000)).entries
    mine = [(e.operator, e.action, e.target) for e in entries if e.target == "emergency/hubei"]
    assert mine[-2:] == [("alice", "set_emergency", "emergency/hubei"),
                         ("alice", "clear_emergency", "emergency/hubei")]


def test_the_live_pages_show_the_emergencies_the_plan_carries():
    from callroute.v1 import operator_pb2, types_pb2
    from controlplane.console.emergency import in_force

    plan = types_pb2.Plan(version=7, meta={"emergencies": "hubei=chengdu,hunan.retail=<i>x</i>"})
    shown = in_force(plan)
    assert shown == [{"scope": "hubei", "host": "chengdu"}, {"scope": "hunan/retail", "host": "<i>x</i>"}]
    assert in_force(types_pb2.Plan(version=8)) == [] and in_force(None) == []
    console = Console(OperatorClient(["127.0.0.1:1"]), secure_cookie=False)
    centers = operator_pb2.ListCentersReply(plan_version=7)
    for view in ("network", "wallboard"):
        html = console.env.get_template(f"live_{view}.html").render(
            s=None, centers=centers, pending=[], plan=None, moved=[], shares={}, view=view, emergencies=shown)
        banner = html.split('id="emergency-banner"', 1)[1].split("</p>", 1)[0]
        assert "hubei → chengdu" in banner and "hunan/retail → &lt;i&gt;x&lt;/i&gt;" in banner, view
        quiet = console.env.get_template(f"live_{view}.html").render(
            s=None, centers=centers, pending=[], plan=None, moved=[], shares={}, view=view, emergencies=[])
        assert "emergency-banner" not in quiet, view


# ---------------------------------------------------------------- topology pages (issues 21 and 18)
# Last in the module: they change the stage's topology (a treatment chain, shaanxi re-homed).

SCRIPT = "<script>window.__pwned = 1</script>"


def _national_yaml(**changes) -> str:
    import msgspec

    from bench.console_latency import NATIONAL
    from controlplane.core.topology import dump_topology, load_topology

    t = load_topology(NATIONAL)
    for bid, kw in changes.items():
        t = msgspec.structs.replace(t, branches=tuple(
            msgspec.structs.replace(b, **kw) if b.id == bid else b for b in t.branches))
    return dump_topology(t)


def _csrf(console: Console) -> str:
    return next(iter(console.sessions.values())).csrf


def _expect(html: str) -> str:
    return html.split('name="expect_version" value="', 1)[1].split('"', 1)[0]


def test_topology_page_shows_its_parts_and_only_an_admin_gets_its_forms(stage):
    _, viewer = logged_in(stage, "victor")
    r = viewer.get("/topology")
    assert r.status_code == 200, r.text[-1500:]
    for part in ('id="topology-version"', 'id="topology-centers"', 'id="topology-skills"',
                 'id="topology-treatments"', 'id="topology-branches"', 'id="topology-history"'):
        assert part in r.text, part
    assert 'data-branch="shaanxi"' in r.text and 'data-live="topology"' in r.text
    assert "data-action" not in r.text and 'action="/topology/check"' not in r.text
    _, operator = logged_in(stage, "alice")
    assert "data-action" not in operator.get("/topology").text  # ApplyTopology is an admin's
    _, admin = logged_in(stage, "ada")
    assert 'action="/topology/check"' in admin.get("/topology").text
    assert viewer.get("/topology?page=x").status_code == 400
    assert viewer.get("/topology/version?v=-1").status_code == 400


def test_topology_actions_need_an_admin_csrf_and_a_reason_and_escape_what_they_name(stage):
    text = _national_yaml(hubei={"home": "chengdu"})
    forms = {"/topology/check": {"topology": text},
             "/act/topology/apply": {"topology": text, "reason": "r", "expect_version": "0"},
             "/act/topology/rollback": {"version": "0", "reason": "r", "expect_version": "0"}}
    ada, admin = logged_in(stage, "ada")
    before = audit_size(ada, stage)
    for name in ("victor", "alice"):
        console, client = logged_in(stage, name)
        for path, form in forms.items():
            r = client.post(path, data={**form, "csrf": _csrf(console)})
            assert r.status_code == 403, (name, path, r.status_code)
    for path, form in forms.items():
        r = admin.post(path, data=form)
        assert r.status_code == 403 and "CSRF" in r.text, path
    csrf = _csrf(ada)
    r = admin.post("/act/topology/apply", data={**forms["/act/topology/apply"], "reason": " ", "csrf": csrf})
    assert r.status_code == 400 and "reason" in r.text
    r = admin.post("/act/topology/rollback",
                   data={**forms["/act/topology/rollback"], "reason": "", "csrf": csrf})
    assert r.status_code == 400 and "reason" in r.text
    r = admin.post("/topology/check", data={"topology": " ", "csrf": csrf})
    assert r.status_code == 400 and "topology" in r.text
    # diffed against a version that is not the one in force: refused, check again
    r = admin.post("/act/topology/apply", data={**forms["/act/topology/apply"], "expect_version": "7",
                                                "csrf": csrf})
    assert r.status_code == 409 and "expect_version=7" in r.text
    # the control plane's refusal names the field and the value; the value is shown as text
    bad = _national_yaml(hubei={"id": f"hubei{SCRIPT}"})
    r = admin.post("/topology/check", data={"topology": bad, "csrf": csrf})
    assert r.status_code == 400 and "branches[" in r.text, r.text[-1500:]
    assert "&lt;script&gt;window.__pwned" in r.text and SCRIPT not in r.text
    # a network's file is far over the console's other forms' limit (200 centers: ~0.9 MB)
    big = text + "\n# " + "x" * (2 * console_app.MAX_BODY) + "\n"
    r = admin.post("/topology/check", data={"topology": big, "csrf": csrf})
    assert r.status_code == 200 and "branch re-homed" in r.text, r.text[-1500:]
    assert audit_size(ada, stage) == before  # nothing was stored


def test_a_topology_checked_applied_approved_and_rolled_back_from_the_console(stage):
    from controlplane.core.model import TreatmentAction, TreatmentStep

    ada, admin = logged_in(stage, "ada")
    csrf = _csrf(ada)
    # 1. a treatment chain on shaanxi's calls: shown in the dry run, applied at once (a callback offer
    # keeps the call where it is; a releasing step would need bob: test_topodiff)
    chain = (TreatmentStep(60.0, TreatmentAction.CALLBACK_OFFER, "cb_offer_xian"),)
    text = _national_yaml(shaanxi={"treatments": chain})
    r = admin.post("/topology/check", data={"topology": text, "csrf": csrf})
    assert r.status_code == 200, r.text[-1500:]
    row = r.text.split('<tr data-kind="treatments changed">', 1)[1].split("</tr>", 1)[0]
    assert "shaanxi" in row and "&gt; 60 s callback_offer cb_offer_xian" in row
    assert 'id="moves-off"' not in r.text and 'id="topology-apply-form"' in r.text
    r = admin.post("/act/topology/apply", data={"topology": text, "reason": f"callbacks {SCRIPT}",
                                                "expect_version": _expect(r.text), "csrf": csrf,
                                                "next": "/topology"})
    assert r.status_code == 200 and "apply as topology v1: APPLIED (plan v" in r.text, r.text[-1500:]
    assert 'data-version="1"' in r.text and f"callbacks {SCRIPT}" not in r.text
    assert "reason: callbacks &lt;script&gt;" in r.text
    chains = r.text.split('id="topology-treatments"', 1)[1].split("</table>", 1)[0]
    assert 'data-scope="branch shaanxi"' in chains and "cb_offer_xian" in chains

    # 2. shaanxi re-homed chengdu -> lanzhou: calls leave open chengdu, so it waits for bob
    text2 = _national_yaml(shaanxi={"treatments": chain, "home": "lanzhou"})
    r = admin.post("/topology/check", data={"topology": text2, "csrf": csrf})
    assert 'id="moves-off"' in r.text and 'data-center="chengdu"' in r.text
    assert 'data-branch="shaanxi"' in r.text.split('id="topology-routes"', 1)[1]  # its routes move
    r = admin.post("/act/topology/apply", data={"topology": text2, "reason": "xian closer to lanzhou",
                                                "expect_version": _expect(r.text), "csrf": csrf,
                                                "next": "/topology"})
    assert r.status_code == 200 and "as topology v2: PENDING approval" in r.text, r.text[-1500:]
    rid = r.text.split("(request ", 1)[1].split(")", 1)[0]
    assert f'data-request="{rid}"' in r.text.split('id="topology-pending"', 1)[1]
    bob, bclient = logged_in(stage, "bob")
    assert "apply_topology v2" in bclient.get("/pending").text
    r = bclient.post("/act/approve", data={"request_id": rid, "csrf": _csrf(bob), "next": "/topology"})
    assert r.status_code == 200 and "APPLIED" in r.text, r.text[-1500:]
    assert 'data-version="2"' in r.text and "approved by bob" in r.text

    # 3. v1 against v2: the admin gets the control plane's dry run (moves, predictions) and a rollback form
    r = admin.get("/topology/version?v=1")
    assert r.status_code == 200 and 'id="topology-rollback-form"' in r.text, r.text[-1500:]
    assert "lanzhou" in r.text.split('id="topology-moves"', 1)[1].split("</table>", 1)[0]
    _, viewer = logged_in(stage, "victor")
    r = viewer.get("/topology/version?v=1")
    assert r.status_code == 200 and "re-homed" in r.text and "data-action" not in r.text
    assert 'id="topology-moves"' not in r.text  # the predicted effect is an admin's dry run
    r = admin.post("/act/topology/rollback", data={"version": "1", "reason": "lanzhou short of seats",
                                                   "expect_version": "2", "csrf": csrf,
                                                   "next": "/topology"})
    assert r.status_code == 200, r.text[-1500:]
    assert "rollback to v1 as topology v3: PENDING approval" in r.text, r.text[-1500:]
    rid = r.text.split("(request ", 1)[1].split(")", 1)[0]
    r = bclient.post("/act/refuse", data={"request_id": rid, "reason": "not now", "csrf": _csrf(bob)})
    assert r.status_code == 200 and "refused" in r.text
