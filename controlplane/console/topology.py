"""The console's topology pages (issue 21 on issue 18's live topology), as `callroute topology` offers
them: the version in force with its centers, branches, skills and overload treatment chains, and
the history (who, when, why); one version compared with the one in force; a pasted or uploaded
file checked (dry run), then applied with a reason; a stored version rolled back to. Applying and
rolling back go the control plane's one path (ApplyTopology / RollbackTopology): a change that
moves calls off an open center waits for a second operator on the approvals page.

Roles as the control plane has them: anyone logged in reads; ApplyTopology and RollbackTopology
(dry runs too) are an admin's, so only an admin sees their forms, and the console refuses them to
anyone else (403) before asking. A non-admin comparing a version gets the diff computed here from
the two stored topologies (core/topodiff.py), without the control plane's predicted effect.

Must not: show operator text as markup (the templates autoescape), keep state, or accept a form
larger than the control plane would take.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from controlplane.cli.topology import MAX_FILE_BYTES
from controlplane.core.model import Topology
from controlplane.core.topodiff import NO_CHAIN, chain_text, diff_topologies

from .forms import Refused, change_message, field_value, int_field, reason_field

ACTION = "apply_topology"  # the pending records' action (service/topology.py)
# a topology's text goes URL-encoded: YAML's punctuation and newlines take 3 bytes each, so the form
# may be up to three times the text the control plane takes (MAX_FILE_BYTES), plus the other fields
TOPOLOGY_FORM_BODY = 3 * MAX_FILE_BYTES + 64 * 1024
HISTORY_PAGE = 20
# a dry run lists every predicted route change; a page shows this many (the rest are counted)
ROUTE_CHANGES_SHOWN = 200


def decode(text: str, what: str) -> Topology:
    try:
        return msgspec.json.decode(text, type=Topology)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise Refused(502, f"{what}: the control plane sent a topology this console cannot read: {e}"
                      ) from None


def chains(t: Topology) -> list[dict[str, str]]:
    """Every treatment chain the topology sets, from the widest scope in, with whom it applies to
    (core/treatments.chain_for picks the narrowest one set for a branch's skill)."""
    out = [{"scope": "policy", "applies": "every branch and skill without a narrower chain",
            "chain": chain_text(t.policy.treatments, NO_CHAIN)}]
    for skill, chain in sorted(t.policy.skill_treatments.items()):
        out.append({"scope": f"skill {skill}", "applies": f"every branch's {skill} calls",
                    "chain": chain_text(chain)})
    for b in t.branches:
        if b.treatments:
            out.append({"scope": f"branch {b.id}", "applies": f"{b.id}'s calls of every skill",
                        "chain": chain_text(b.treatments)})
        for skill, chain in sorted(b.skill_treatments.items()):
            out.append({"scope": f"branch {b.id}/{skill}", "applies": f"{b.id}'s {skill} calls",
                        "chain": chain_text(chain)})
    return out


def skills(t: Topology) -> list[dict[str, Any]]:
    """Per skill: who staffs it and who calls it, as the planner sees the file."""
    out = []
    for k in sorted(t.skills()):
        staffed = [c for c in t.centers if c.agents.get(k, 0) > 0]
        calling = [b for b in t.branches if b.calls_per_hour.get(k, 0) > 0]
        out.append({"skill": k, "centers": len(staffed), "agents": sum(c.agents[k] for c in staffed),
                    "branches": len(calling), "calls": sum(b.calls_per_hour[k] for b in calling),
                    "aht_s": t.aht(k)})
    return out


def topology_context(t: Topology) -> dict[str, Any]:
    homed: dict[str, int] = {}
    for b in t.branches:
        homed[b.home] = homed.get(b.home, 0) + 1
    return {"topo": t, "chains": chains(t), "skills": skills(t), "homed": homed}


async def live_context(console: Any, s: Any) -> dict[str, Any]:
    """The topology page's live part: the version in force and the topology changes waiting."""
    pb = console.pb
    info, pending = await asyncio.gather(console.rpc(s, "ShowTopology", pb.ShowTopologyRequest()),
                                         console.rpc(s, "ListPending", pb.ListPendingRequest()))
    return {"info": info.info, "stored": info.stored,
            "pending": [p for p in pending.pending if p.action == ACTION], "view": "topology"}


def need_admin(s: Any, what: str) -> None:
    if not s.is_admin:
        raise Refused(403, f"{what} needs an admin (the control plane's role for it)")


def version_param(raw: str, name: str = "version") -> int:
    if not raw.isdigit() or len(raw) > 19:
        raise Refused(400, f"{name}={raw[:40]!r}: must be a topology version (0: the start-up file)")
    return int(raw)


def topology_text(form: dict[str, str]) -> str:
    text = form.get("topology", "")
    if not text.strip():
        raise Refused(400, "topology='': required: paste the topology file or choose it")
    if len(text) > MAX_FILE_BYTES:
        raise Refused(413, f"topology: {len(text)} characters, more than {MAX_FILE_BYTES}")
    return text


def reply_diff(reply: Any) -> dict[str, Any]:
    """A dry run's answer (ApplyTopology / RollbackTopology) as the diff template shows it."""
    return {"changes": list(reply.changes), "moves_off": list(reply.moves_off),
            "route_changes": list(reply.route_changes)[:ROUTE_CHANGES_SHOWN],
            "route_changes_total": len(reply.route_changes), "below_target": list(reply.below_target),
            "predicted": True, "message": reply.message, "from_version": reply.from_version,
            "topology_version": reply.topology_version, "hash": reply.topology_hash}


def topology_message(what: str, reply: Any, request_id: str) -> str:
    from callroute.v1 import operator_pb2

    if reply.status == operator_pb2.CHANGE_STATUS_UNSPECIFIED:
        return f"{what}: nothing to apply ({reply.message})"
    moves = "; ".join(f"moves calls off open {m.center}" for m in reply.moves_off)
    return change_message(f"{what} as topology v{reply.topology_version}", reply,
                          reply.request_id or request_id) + (f"; {moves}" if moves else "")


def routes(console: Any, page: Callable[..., Any], action: Callable[..., Any],
           posted: Callable[..., Any]) -> list[Route]:
    pb = console.pb

    @page
    async def topology_page(request: Request, s: Any) -> Response:
        token = request.query_params.get("page", "")
        if token and (not token.isdigit() or len(token) > 19):
            raise Refused(400, f"page={token[:40]!r}: not a page this console links to")
        shown = await console.rpc(s, "ShowTopology", pb.ShowTopologyRequest(with_topology=True))
        history = await console.rpc(s, "TopologyHistory", pb.TopologyHistoryRequest(
            page_size=HISTORY_PAGE, page_token=token))
        live = await live_context(console, s)
        topo = decode(shown.topology_json, f"topology v{shown.info.version}")
        return console.render("topology.html", s, page="/topology", versions=history.versions,
                              next_page=history.next_page_token, **live, **topology_context(topo))

    @page
    async def version_page(request: Request, s: Any) -> Response:
        v = version_param(request.query_params.get("v", ""), "v")
        current = await console.rpc(s, "ShowTopology", pb.ShowTopologyRequest(with_topology=not s.is_admin))
        ctx: dict[str, Any] = {"v": v, "current": current.info, "stored": current.stored, "info": None}
        if v and v != current.info.version:
            ctx["info"] = (await console.rpc(s, "ShowTopology", pb.ShowTopologyRequest(
                version=v, with_topology=not s.is_admin))).info
        elif v == current.info.version:
            ctx["info"] = current.info
        if s.is_admin:
            # the control plane's own dry run: the same diff, moves and predictions a rollback shows
            reply = await console.rpc(s, "RollbackTopology", pb.RollbackTopologyRequest(
                version=v, dry_run=True, operator="console",
                reason=f"console: compare v{v} with the version in force (dry run)"))
            ctx["diff"] = reply_diff(reply)
        elif v == 0 and current.stored:
            # ShowTopology's version 0 is the one in force; the start-up file is compared by a dry run
            ctx["diff"] = None
            ctx["note"] = "v0 (the start-up file) is compared with the version in force by an admin's dry run"
        else:
            old = decode(current.topology_json, f"topology v{current.info.version}")
            new = old
            if v != current.info.version:
                got = await console.rpc(s, "ShowTopology",
                                        pb.ShowTopologyRequest(version=v, with_topology=True))
                new = decode(got.topology_json, f"topology v{v}")
            ctx["diff"] = {"changes": list(diff_topologies(old, new)), "predicted": False,
                           "from_version": current.info.version, "topology_version": v}
        return console.render("topology_version.html", s, page="/topology", **ctx)

    async def check(request: Request, s: Any, form: dict[str, str]) -> Response:
        need_admin(s, "checking a topology (a dry run of ApplyTopology)")
        text = topology_text(form)
        reply = await console.rpc(s, "ApplyTopology", pb.ApplyTopologyRequest(
            topology_yaml=text, operator="console", reason="console: topology check (dry run)", dry_run=True))
        return console.render("topology_check.html", s, page="/topology", diff=reply_diff(reply), text=text)

    async def apply(s: Any, form: dict[str, str]) -> str:
        need_admin(s, "applying a topology")
        text = topology_text(form)
        reason = reason_field(form)
        expect = int_field(form, "expect_version")
        await expect_current(s, expect)
        rid = str(uuid.uuid4())
        reply = await console.rpc(s, "ApplyTopology", pb.ApplyTopologyRequest(
            topology_yaml=text, operator="console", reason=reason, request_id=rid))
        return topology_message("apply", reply, rid)

    async def rollback(s: Any, form: dict[str, str]) -> str:
        need_admin(s, "rolling the topology back")
        v = version_param(field_value(form, "version"))
        reason = reason_field(form)
        await expect_current(s, int_field(form, "expect_version"))
        rid = str(uuid.uuid4())
        reply = await console.rpc(s, "RollbackTopology", pb.RollbackTopologyRequest(
            version=v, operator="console", reason=reason, request_id=rid))
        return topology_message(f"rollback to v{v}", reply, rid)

    async def expect_current(s: Any, expect: int) -> None:
        """The operator decided on a diff against `expect`: refuse if another version came since
        (the control plane guards its own read-diff-store, not the time the operator spent reading)."""
        now = (await console.rpc(s, "ShowTopology", pb.ShowTopologyRequest())).info.version
        if now != expect:
            raise Refused(409, f"expect_version={expect}: topology v{now} is in force now; "
                               f"check the change again against it")

    return [
        Route("/topology", topology_page), Route("/topology/version", version_page),
        Route("/topology/check", posted(check, TOPOLOGY_FORM_BODY), methods=["POST"]),
        Route("/act/topology/apply", action(apply, TOPOLOGY_FORM_BODY), methods=["POST"]),
        Route("/act/topology/rollback", action(rollback), methods=["POST"]),
    ]
