"""The request rules every operator RPC shares: reasons, identities, request ids, page sizes.

A module of its own so that the RPC groups (operator.py, operator_drills.py, operator_plans.py)
and the handlers in overrides.py, calendars.py and topology.py read one definition.
"""

from __future__ import annotations

from typing import Any

import grpc
import msgspec

from controlplane.core.model import InvalidInput, Plan, check_id

from . import topology

# operators type reasons; a page of text is the most any audit line needs
MAX_REASON = 1000
# default page sizes when the request says 0
DEFAULT_HISTORY = 20
DEFAULT_AUDIT = 100
# SetCenterState waits this long for the plan carrying the change, to report its version; the
# change is durable before the wait, so running out only means "plan version not yet known"
APPLY_WAIT_S = 2.0
# AbortDrill waits this long for the leader to restore the routes (a tick and an urgent publish,
# normally well under a second) before answering with the drill as it stands
ABORT_WAIT_S = 3.0


def plan_inputs(plan: Plan) -> dict[str, str]:
    """ExplainReply.inputs: the plan-wide facts that produced it, as operator-readable strings."""
    out = {k: str(v) for k, v in plan.meta.items()}
    out["feasible"] = "yes" if plan.feasible else "no"
    if plan.infeasible_reasons:
        out["infeasible_reasons"] = "; ".join(plan.infeasible_reasons)
    out["closed"] = ",".join(plan.closed)
    out["topology_hash"] = plan.topology_hash
    return out


def bind_identity(request: Any, field: str, context: Any) -> None:
    """With operator tokens or certificates configured, who acts is who authenticated: the
    name in the request cannot impersonate another operator (the two-person rule relies on it)."""
    from .auth import caller_identity

    ident = caller_identity(context)
    if ident:
        setattr(request, field, ident)


def check_change(request: Any) -> None:
    """The fields every change request carries: why, who, and the idempotency key."""
    if not request.reason.strip():
        raise InvalidInput("reason", request.reason, "required: say why (it goes to the audit trail)")
    if len(request.reason) > MAX_REASON:
        raise InvalidInput("reason", len(request.reason), f"longer than {MAX_REASON} characters")
    check_id("operator", request.operator)
    if request.request_id:
        check_id("request_id", request.request_id)


class AdminRecord(msgspec.Struct, frozen=True):
    state: str
    reason: str
    operator: str
    at: float
    request_id: str = ""


def request_what(action: str, center: str = "", state: str = "", to_version: int = 0) -> str:
    """What a request id is bound to: the action, its target and the state asked for."""
    if action == "rollback_plan":
        return f"rollback_plan plan/{to_version}"
    if action.endswith("_override"):  # service/overrides.py: `center` carries the override id
        return f"{action} override/{center}"
    if action == topology.ACTION:  # service/topology.py: `center` carries the version, "v3"
        return f"{action} topology/{center}"
    if action == "set_calendar":  # service/calendars.py: one calendar, its records say so
        return "set_calendar calendar"
    return f"{action} center/{center}" + (f" {state}" if state else "")


async def check_same_request(context: grpc.aio.ServicerContext, rid: str, first_what: str,
                             first_operator: str, what: str, operator: str) -> None:
    """Refuse a request id already used for another action, target or operator: a retry must
    never be answered with, or approve, someone else's change."""
    if first_what and (first_what, first_operator) != (what, operator):
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"request_id={rid!r} was used for {first_what!r} by {first_operator!r}, not {what!r} by "
            f"{operator!r}: a request id names one change; use a new one",
        )

