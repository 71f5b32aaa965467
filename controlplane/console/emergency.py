"""The console's emergency page (issue 18's emergency override, in the browser as issue 21 asks):
every stored emergency (scope, host, who, why, since, until, whether the latest plan carries it),
a form to set one and a clear button per emergency, and the banner the live network page and
the wallboard show while a plan carries any.

Roles as the control plane has them: anyone logged in reads; SetEmergency and ClearEmergency are an
operator's (a viewer sees no form and gets 403 here before the control plane is asked). No second
operator, as in the CLI: an emergency acts at once (service/emergency.py says why), so the page
says so next to the button.

The banner is read from the plan the live pages already fetch (`meta["emergencies"]`, set by
core/emergency.py): no extra call per refresh, and it shows what the switches are being told, not
what is stored.

Must not: show operator text as markup (the templates autoescape), keep state, or take an end time
without its zone (it would end hours off in another one).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from controlplane.cli.liveops import parse_until
from controlplane.core.model import InvalidInput, check_id

from .forms import Refused, change_message, field_value, reason_field


def in_force(plan: Any) -> list[dict[str, str]]:
    """The emergencies a plan applies, as the banner shows them: scope (branch or branch/skill) and host."""
    meta = plan.meta.get("emergencies", "") if plan is not None else ""
    out = []
    for item in meta.split(","):
        eid, sep, host = item.partition("=")
        if sep and eid:
            branch, dot, skill = eid.partition(".")
            out.append({"scope": f"{branch}/{skill}" if dot else branch, "host": host})
    return out


def _id_field(form: dict[str, str], name: str, *, required: bool = True) -> str:
    value = field_value(form, name, required=required)
    if value:
        try:
            check_id(name, value)
        except InvalidInput as e:
            raise Refused(400, str(e)) from None
    return value


def routes(console: Any, page: Callable[..., Any], action: Callable[..., Any]) -> list[Route]:
    pb = console.pb

    @page
    async def emergency_page(request: Request, s: Any) -> Response:
        reply = await console.rpc(s, "ListEmergencies", pb.ListEmergenciesRequest())
        shown = sorted(reply.emergencies, key=lambda e: (e.branch, e.skill))
        return console.render("emergency.html", s, page="/emergency", emergencies=shown,
                              plan_version=reply.plan_version)

    @action
    async def set_emergency(s: Any, form: dict[str, str]) -> str:
        branch, host = _id_field(form, "branch"), _id_field(form, "host")
        skill = _id_field(form, "skill", required=False)
        raw_until = form.get("until", "").strip()
        try:
            until = parse_until(raw_until, time.time())
        except InvalidInput as e:
            raise Refused(400, f"until={raw_until!r}: {e.why}") from None
        reason, rid = reason_field(form), str(uuid.uuid4())
        reply = await console.rpc(s, "SetEmergency", pb.SetEmergencyRequest(
            branch=branch, skill=skill, host=host, until=until, reason=reason, operator="console",
            request_id=rid))
        scope = f"{branch}/{skill}" if skill else branch
        return change_message(f"emergency {scope} -> {host}", reply, rid)

    @action
    async def clear_emergency(s: Any, form: dict[str, str]) -> str:
        branch, skill = _id_field(form, "branch"), _id_field(form, "skill", required=False)
        reason, rid = reason_field(form), str(uuid.uuid4())
        reply = await console.rpc(s, "ClearEmergency", pb.ClearEmergencyRequest(
            branch=branch, skill=skill, reason=reason, operator="console", request_id=rid))
        scope = f"{branch}/{skill}" if skill else branch
        return change_message(f"clear emergency {scope}", reply, rid)

    return [Route("/emergency", emergency_page),
            Route("/act/emergency", set_emergency, methods=["POST"]),
            Route("/act/emergency/clear", clear_emergency, methods=["POST"])]
