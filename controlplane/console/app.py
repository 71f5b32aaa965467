"""The operator web console: `callroute console --endpoint H:P --listen H:P`.

A Starlette app rendering Jinja2 templates on the server (autoescaped: operator text is never
markup), with htmx and a small script shipped in static/ (nothing from a CDN) and one
server-sent-events stream per open page for live updates. It is a client of OperatorService
exactly as the CLI is: `cli.client.OperatorClient` with the operator's own token, so the control plane
decides who may do what and names the operator in the audit trail from that token.

- Login: an operator token is checked with ListCenters; its role is learnt by two calls that every
  lower role gets PERMISSION_DENIED for and a high enough role INVALID_ARGUMENT (an empty request,
  refused before anything is stored). The session is a random id in a cookie (HttpOnly,
  SameSite=Strict, Secure under TLS); the token stays in this process's memory, never in the page.
- Actions are POSTs that need the session, a role able to act (else 403 before anything else is
  looked at) and the session's CSRF token (else 403); a control-plane refusal is passed on with
  the matching HTTP status.
- Live pages (network, pending, wallboard) hold an SSE stream that polls the control plane every
  POLL_S and sends the re-rendered fragment when it changed.

Must not: keep unbounded state per client (sessions, streams and bodies are capped), act without a
CSRF token, show an action control to a viewer, or listen off loopback without TLS unless told
--insecure.

Why over 600 lines: it is the console's one routing table (pages, actions, the live stream) with
the session and CSRF checks every route goes through; templates, static assets and the operator
client are separate files.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import hmac
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from controlplane.cli.client import OperatorClient, RpcFailure, _enum_name
from controlplane.core.model import InvalidInput, check_id
from controlplane.service.auth import MAX_TOKEN_LEN, Role

from . import emergency, topology
from .forms import (
    MAX_BODY,
    Refused,
    change_message,
    field_value,
    float_field,
    int_field,
    read_form,
    reason_field,
)

HERE = Path(__file__).resolve().parent
COOKIE = "callroute_console"
# a control room has tens of screens; far more sessions is someone logging in in a loop
MAX_SESSIONS = 1000
# a duty shift and some: a wallboard logged in in the morning still shows at night
SESSION_TTL_S = 14 * 3600
# open live pages across all sessions; each polls the control plane
MAX_STREAMS = 200
# the live pages' refresh: well inside the 1 s an operator's change may take to show everywhere
POLL_S = 0.2
MAX_FLASH = 8
MAX_DRILLS_REMEMBERED = 50
# the audit search reads this many newest entries (the server caps its pages itself)
AUDIT_SCAN = 2000
# the drills page reads at most this many ListDrills pages (retention keeps ~1,000 drills; a page is
# the server's max_list) and shows the newest DRILLS_SHOWN
DRILL_PAGES = 10
DRILLS_SHOWN = 200
# the state-changing verbs, as the CLI names them
STATES = {"close": "CLOSED", "drain": "DRAINING", "open": "OPEN"}
LIVE_VIEWS = ("network", "pending", "wallboard", "topology")
# where an action may send the browser back to: never a URL from the request (no open redirect)
PAGES = {"/": "network", "/plan": "plan", "/explain": "explain", "/history": "history",
         "/drills": "drills", "/pending": "pending", "/audit": "audit", "/topology": "topology",
         "/emergency": "emergency"}


@dataclass
class Session:
    sid: str
    client: OperatorClient
    role: Role
    csrf: str
    created: float
    flash: collections.deque[tuple[str, str]] = field(
        default_factory=lambda: collections.deque(maxlen=MAX_FLASH))
    drills: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=MAX_DRILLS_REMEMBERED))

    @property
    def can_act(self) -> bool:
        return self.role >= Role.OPERATOR

    @property
    def is_admin(self) -> bool:
        return self.role >= Role.ADMIN


_HTTP_BY_GRPC = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403,
}


def short(enum_type: Any, number: int) -> str:
    return _enum_name(enum_type.DESCRIPTOR, number)


def when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at > 0 else "-"


class Console:
    def __init__(self, base: OperatorClient, *, secure_cookie: bool) -> None:
        self.base = base
        self.secure_cookie = secure_cookie
        self.sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()
        self.streams = 0
        # gRPC here is the CLI's blocking client; its calls run on these threads, one per call in
        # flight, so a slow control plane holds threads, not the event loop
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="console-rpc")
        # the last plan shown: plans are immutable per version, and a national plan is big
        self._plan_cache: tuple[int, Any] | None = None
        # set (and replaced) when an action through this console was answered: its live pages
        # refresh at once instead of at their next poll
        self._changed: asyncio.Event | None = None
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"),
                               autoescape=select_autoescape(default=True, default_for_string=True))
        self.env.globals.update(short=short, when=when)
        from callroute.v1 import operator_pb2, types_pb2

        self.pb, self.types = operator_pb2, types_pb2
        self.env.globals.update(types=types_pb2, pb=operator_pb2)

    # ---------------------------------------------------------------- gRPC

    def client_for(self, token: str) -> OperatorClient:
        c = OperatorClient(self.base.endpoints, token, self.base.timeout_s, self.base.tls)
        # one channel per control-plane endpoint for the whole console: the token travels per call
        c._channels = self.base._channels
        return c

    async def call(self, client: OperatorClient, method: str, request: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, client.call, method, request)

    async def rpc(self, s: Session, method: str, request: Any) -> Any:
        """A call for a page or an action; a refusal becomes the matching HTTP answer."""
        try:
            return await self.call(s.client, method, request)
        except RpcFailure as e:
            if e.code == grpc.StatusCode.UNAUTHENTICATED:
                self.sessions.pop(s.sid, None)  # a revoked token ends the session
            raise Refused(_HTTP_BY_GRPC.get(e.code, 502), f"{method}: {e.code.name}: {e.details}") from None

    async def learn_role(self, client: OperatorClient) -> Role:
        async def allowed(method: str, request: Any) -> bool:
            try:
                await self.call(client, method, request)
            except RpcFailure as e:
                if e.code == grpc.StatusCode.PERMISSION_DENIED:
                    return False
                if e.code == grpc.StatusCode.INVALID_ARGUMENT:
                    return True
                raise
            return True

        pb = self.pb
        if not await allowed("Approve", pb.ApproveRequest()):
            return Role.VIEWER
        return Role.ADMIN if await allowed("RollbackPlan", pb.RollbackPlanRequest()) else Role.OPERATOR

    async def plan(self, s: Session, version: int) -> Any:
        cached = self._plan_cache
        if cached is not None and cached[0] == version and version:
            return cached[1]
        reply = await self.rpc(s, "ShowPlan", self.pb.ShowPlanRequest(version=version))
        self._plan_cache = (reply.plan.version, reply)
        return reply

    def changed(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def kick(self) -> None:
        ev, self._changed = self._changed, None
        if ev is not None:
            ev.set()

    # ---------------------------------------------------------------- sessions

    def session(self, request: Request) -> Session | None:
        sid = request.cookies.get(COOKIE, "")
        s = self.sessions.get(sid)
        if s is None:
            return None
        if time.monotonic() - s.created > SESSION_TTL_S:
            self.sessions.pop(sid, None)
            return None
        return s

    def new_session(self, client: OperatorClient, role: Role) -> Session:
        while len(self.sessions) >= MAX_SESSIONS:
            self.sessions.popitem(last=False)  # the oldest login goes first
        s = Session(secrets.token_urlsafe(32), client, role, secrets.token_urlsafe(32), time.monotonic())
        self.sessions[s.sid] = s
        return s

    # ---------------------------------------------------------------- rendering

    def render(self, name: str, s: Session | None, status: int = 200, **ctx: Any) -> HTMLResponse:
        flash = list(s.flash) if s is not None else []
        if s is not None:
            s.flash.clear()
        html = self.env.get_template(name).render(s=s, flash=flash, **ctx)
        return HTMLResponse(html, status_code=status)

    async def live_context(self, s: Session, view: str) -> dict[str, Any]:
        if view == "topology":
            return await topology.live_context(self, s)
        centers, pending = await asyncio.gather(self.rpc(s, "ListCenters", self.pb.ListCentersRequest()),
                                                self.rpc(s, "ListPending", self.pb.ListPendingRequest()))
        plan = None
        if centers.plan_version:
            plan = await self.plan(s, centers.plan_version)
        return {"centers": centers, "pending": pending.pending, "plan": plan,
                "emergencies": emergency.in_force(plan.plan) if plan else [],
                "moved": moved_routes(plan.plan) if plan else [],
                "shares": call_shares(plan.plan) if plan else {}, "view": view}

    async def live_html(self, s: Session, view: str) -> str:
        ctx = await self.live_context(s, view)
        return self.env.get_template(f"live_{view}.html").render(s=s, **ctx)


def moved_routes(plan: Any) -> list[Any]:
    """Routes that leave home: what an operator looks at first."""
    from callroute.v1 import types_pb2

    keep = {types_pb2.ROUTE_KIND_HOME, types_pb2.ROUTE_KIND_PINNED}
    return sorted((r for r in plan.routes if r.kind not in keep), key=lambda r: (r.branch, r.skill))


def call_shares(plan: Any) -> dict[str, float]:
    """Each center's share of the offered load the plan predicts (Erlangs over all skills)."""
    load = {c: sum(p.load_erlangs for p in pred.skills.values()) for c, pred in plan.receivers.items()}
    total = sum(load.values())
    return {c: v / total for c, v in load.items()} if total > 0 else {}


# ---------------------------------------------------------------- request helpers


def back_to(form: dict[str, str], default: str = "/") -> str:
    nxt = form.get("next", "")
    return nxt if nxt in PAGES else default


def build_app(console: Console) -> Callable[..., Awaitable[None]]:
    Handler = Callable[[Request], Awaitable[Response]]

    def page(fn: Callable[[Request, Session], Awaitable[Response]]) -> Handler:
        async def run(request: Request) -> Response:
            s = console.session(request)
            if s is None:
                return RedirectResponse("/login", status_code=303)
            try:
                return await fn(request, s)
            except Refused as e:
                return console.render("error.html", console.session(request), e.status, message=e.message)

        return run

    def posted(fn: Callable[[Request, Session, dict[str, str]], Awaitable[Response]],
               max_body: int = MAX_BODY) -> Handler:
        """A POST from a role that may act: session, then role, then CSRF, all before any field is
        looked at; then `fn` with the form. A refusal is the error page with its status."""

        async def run(request: Request) -> Response:
            s = console.session(request)
            if s is None:
                return console.render("error.html", None, 401, message="not logged in")
            if not s.can_act:
                return console.render("error.html", s, 403, message="a viewer cannot change anything")
            try:
                form = await read_form(request, max_body)
                sent = form.get("csrf", "") or request.headers.get("x-csrf-token", "")
                if not hmac.compare_digest(sent.encode(), s.csrf.encode()):
                    raise Refused(403, "missing or wrong CSRF token: reload the page and try again")
                return await fn(request, s, form)
            except Refused as e:
                console.kick()  # a refusal may still have changed something (a pending request that expired)
                return console.render("error.html", console.session(request), e.status, message=e.message)

        return run

    def action(fn: Callable[[Session, dict[str, str]], Awaitable[str]], max_body: int = MAX_BODY) -> Handler:
        """A POST that changes something; the browser goes back to its page with the answer."""

        async def done(request: Request, s: Session, form: dict[str, str]) -> Response:
            target = back_to(form)
            s.flash.append(("ok", await fn(s, form)))
            console.kick()
            return RedirectResponse(target, status_code=303)

        return posted(done, max_body)

    pb = console.pb

    # ---------------------------------------------------------------- login

    async def login_form(request: Request) -> Response:
        return console.render("login.html", None)

    async def login(request: Request) -> Response:
        try:
            form = await read_form(request)
            token = form.get("token", "").strip()
            if not token or len(token) > MAX_TOKEN_LEN:
                raise Refused(400, f"token: required, at most {MAX_TOKEN_LEN} characters")
            client = console.client_for(token)
            try:
                await console.call(client, "ListCenters", pb.ListCentersRequest())
                role = await console.learn_role(client)
            except RpcFailure as e:
                status = 401 if e.code in (grpc.StatusCode.UNAUTHENTICATED,
                                           grpc.StatusCode.PERMISSION_DENIED) else 502
                raise Refused(status, f"the control plane refused the token: {e.code.name}: {e.details}"
                              ) from None
        except Refused as e:
            return console.render("login.html", None, e.status, message=e.message)
        s = console.new_session(client, role)
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(COOKIE, s.sid, max_age=SESSION_TTL_S, httponly=True, samesite="strict",
                        secure=console.secure_cookie, path="/")
        return resp

    async def logout(request: Request) -> Response:
        s = console.session(request)
        if s is not None:
            form = await read_form(request)
            if not hmac.compare_digest(form.get("csrf", "").encode(), s.csrf.encode()):
                return console.render("error.html", s, 403, message="missing or wrong CSRF token")
            console.sessions.pop(s.sid, None)
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE, path="/")
        return resp

    # ---------------------------------------------------------------- pages

    def live_page(view: str, path: str) -> Handler:
        """A page whose main part is a live fragment, first rendered here, then pushed by /events."""

        async def show(request: Request, s: Session) -> Response:
            ctx = await console.live_context(s, view)
            return console.render(f"{view}.html", s, page=path, **ctx)

        return page(show)

    network, wallboard, pending = (live_page("network", "/"), live_page("wallboard", "/wallboard"),
                                   live_page("pending", "/pending"))

    @page
    async def plan_page(request: Request, s: Session) -> Response:
        raw = request.query_params.get("version", "0")
        if not raw.isdigit():
            raise Refused(400, f"version={raw!r}: must be a plan version (0: the latest)")
        reply = await console.rpc(s, "ShowPlan", pb.ShowPlanRequest(version=int(raw)))
        p = reply.plan
        skills = sorted({k for c in p.receivers.values() for k in c.skills})
        return console.render("plan.html", s, page="/plan", reply=reply, plan=p, moved=moved_routes(p),
                              skills=skills, shares=call_shares(p))

    @page
    async def explain(request: Request, s: Session) -> Response:
        q = request.query_params
        ctx: dict[str, Any] = {"q": q}
        if q.get("branch") or q.get("skill") or q.get("caller"):
            for name in ("branch", "skill", "caller"):
                if not q.get(name, "").strip():
                    raise Refused(400, f"{name}={q.get(name, '')!r}: required")
            ctx["reply"] = await console.rpc(s, "Explain", pb.ExplainRequest(
                branch=q["branch"].strip(), skill=q["skill"].strip(), caller=q["caller"].strip(),
                tier=q.get("tier", "").strip()))
        return console.render("explain.html", s, page="/explain", **ctx)

    @page
    async def history(request: Request, s: Session) -> Response:
        q = request.query_params
        reply = await console.rpc(s, "PlanHistory", pb.PlanHistoryRequest(limit=50))
        diff = None
        if q.get("from"):
            f, t = q.get("from", ""), q.get("to", "0") or "0"
            if not f.isdigit() or int(f) < 1:
                raise Refused(400, f"from={f!r}: must be a plan version >= 1")
            if not t.isdigit():
                raise Refused(400, f"to={t!r}: must be a plan version (0: the latest)")
            diff = await console.rpc(s, "DiffPlans",
                                     pb.DiffPlansRequest(from_version=int(f), to_version=int(t)))
        return console.render("history.html", s, page="/history", plans=reply.plans, diff=diff, q=q)

    @page
    async def drills(request: Request, s: Session) -> Response:
        # every drill the control plane keeps (ListDrills pages, in start order), newest first
        shown: list[Any] = []
        token = ""
        for _ in range(DRILL_PAGES):
            reply = await console.rpc(s, "ListDrills", pb.ListDrillsRequest(page_token=token))
            shown.extend(reply.drills)
            token = reply.next_page_token
            if not token:
                break
        shown.sort(key=lambda d: (d.started_at, d.drill_id), reverse=True)
        return console.render("drills.html", s, page="/drills", drills=shown[:DRILLS_SHOWN])

    @page
    async def audit(request: Request, s: Session) -> Response:
        q = request.query_params.get("q", "").strip()[:200]
        reply = await console.rpc(s, "Audit", pb.AuditRequest(limit=AUDIT_SCAN))
        needle = q.lower()
        entries = [e for e in reversed(reply.entries)
                   if not needle or any(needle in str(v).lower() for v in
                                        (e.operator, e.action, e.target, e.reason, e.result, e.request_id))]
        return console.render("audit.html", s, page="/audit", entries=entries, q=q)

    async def events(request: Request) -> Response:
        s = console.session(request)
        if s is None:
            return Response("not logged in", status_code=401)
        view = request.query_params.get("view", "network")
        if view not in LIVE_VIEWS:
            return Response(f"view={view!r}: must be one of {', '.join(LIVE_VIEWS)}", status_code=400)
        if console.streams >= MAX_STREAMS:
            return Response(f"more than {MAX_STREAMS} live pages open", status_code=503)
        console.streams += 1

        async def stream() -> AsyncIterator[str]:
            last = ""
            try:
                while s.sid in console.sessions:
                    changed = console.changed()
                    try:
                        html = await console.live_html(s, view)
                        event = "live"
                    except Refused as e:
                        html, event = e.message, "trouble"
                    if html != last:
                        last = html
                        yield f"event: {event}\n" + "".join(f"data: {ln}\n" for ln in html.split("\n")) + "\n"
                    # the refresh period, cut short by an action through this console
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), POLL_S)
            finally:
                console.streams -= 1

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    # ---------------------------------------------------------------- actions

    def operator_fields(form: dict[str, str]) -> tuple[str, str]:
        return reason_field(form), str(uuid.uuid4())

    @action
    async def set_state(s: Session, form: dict[str, str]) -> str:
        verb = field_value(form, "state")
        if verb not in STATES:
            raise Refused(400, f"state={verb!r}: must be one of {', '.join(STATES)}")
        center = field_value(form, "center")
        try:
            check_id("center", center)
        except InvalidInput as e:
            raise Refused(400, str(e)) from None
        reason, rid = operator_fields(form)
        reply = await console.rpc(s, "SetCenterState", pb.SetCenterStateRequest(
            center=center, state=console.types.AdminState.Value("ADMIN_STATE_" + STATES[verb]),
            reason=reason, operator="console", request_id=rid))
        return change_message(f"{verb} {center}", reply, rid)

    @action
    async def approve(s: Session, form: dict[str, str]) -> str:
        rid = field_value(form, "request_id")
        reply = await console.rpc(s, "Approve", pb.ApproveRequest(request_id=rid, approver="console"))
        if reply.drill_id:
            s.drills.append(reply.drill_id)
        return f"approved {rid}: " + change_message("change", reply, rid)

    @action
    async def refuse(s: Session, form: dict[str, str]) -> str:
        rid = field_value(form, "request_id")
        reason, _ = operator_fields(form)
        reply = await console.rpc(s, "Refuse", pb.RefuseRequest(request_id=rid, reason=reason,
                                                                operator="console"))
        return f"{'withdrew' if reply.withdrawn else 'refused'} {rid}: NOT applied ({reply.message})"

    @action
    async def rollback(s: Session, form: dict[str, str]) -> str:
        if not s.is_admin:
            raise Refused(403, "rollback needs an admin")
        end = form.get("end") == "1"
        version = 0 if end else int_field(form, "version", 1)
        reason, rid = operator_fields(form)
        reply = await console.rpc(s, "RollbackPlan", pb.RollbackPlanRequest(
            to_version=version, reason=reason, operator="console", request_id=rid))
        return change_message("end rollback" if end else f"rollback to v{version}", reply, rid)

    @action
    async def start_drill(s: Session, form: dict[str, str]) -> str:
        mode = field_value(form, "mode")
        if mode not in ("dry_run", "live"):
            raise Refused(400, f"mode={mode!r}: must be dry_run or live")
        raw = form.get("ramp", "").strip()
        try:
            ramp = [float(x) for x in raw.split(",") if x.strip()]
        except ValueError:
            raise Refused(400, f"ramp={raw!r}: must be percents separated by commas, e.g. 10,25,50") from None
        reason, rid = operator_fields(form)
        spec = pb.DrillSpec(center=field_value(form, "center"), ramp_percents=ramp,
                            mode=pb.DrillMode.Value("DRILL_MODE_" + mode.upper()),
                            step_s=float_field(form, "step_s", 0.0),
                            duration_s=float_field(form, "duration_s", 0.0),
                            abort_if_sl_below=float_field(form, "abort_if_sl_below", 0.0))
        reply = await console.rpc(s, "StartDrill", pb.StartDrillRequest(
            spec=spec, reason=reason, operator="console", request_id=rid))
        if reply.drill_id:
            s.drills.append(reply.drill_id)
        return change_message(f"{mode} drill of {spec.center}", reply, rid) + (
            f", drill {reply.drill_id}" if reply.drill_id else "")

    @action
    async def abort_drill(s: Session, form: dict[str, str]) -> str:
        drill_id = field_value(form, "drill_id")
        reason, rid = operator_fields(form)
        reply = await console.rpc(s, "AbortDrill", pb.AbortDrillRequest(
            drill_id=drill_id, reason=reason, operator="console", request_id=rid))
        return f"abort {drill_id}: {short(pb.DrillState, reply.drill.state)} (audit {reply.audit_id})"

    async def security_headers(scope: Any, receive: Any, send: Any) -> None:
        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy",
                     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                     b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
                    (b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    # "same-origin", not "no-referrer": under the latter Chromium sends
                    # `Origin: null` with the console's own forms, which read_form refuses
                    (b"referrer-policy", b"same-origin"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await inner(scope, receive, send_with_headers if scope["type"] == "http" else send)

    routes = [
        Route("/login", login_form, methods=["GET"]), Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", network), Route("/wallboard", wallboard), Route("/pending", pending),
        Route("/plan", plan_page), Route("/explain", explain), Route("/history", history),
        Route("/drills", drills), Route("/audit", audit), Route("/events", events),
        Route("/act/state", set_state, methods=["POST"]), Route("/act/approve", approve, methods=["POST"]),
        Route("/act/refuse", refuse, methods=["POST"]),
        Route("/act/rollback", rollback, methods=["POST"]),
        Route("/act/drill", start_drill, methods=["POST"]),
        Route("/act/abort", abort_drill, methods=["POST"]),
        *topology.routes(console, page, action, posted),
        *emergency.routes(console, page, action),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    inner = Starlette(routes=routes)
    return security_headers
