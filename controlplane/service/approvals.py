"""The two-person rule: a change waiting for a second operator, and who may approve it.

Store layout under the prefix: `pending/<request_id>` a `PendingRecord`, put under a store lease (its
expiry: F13, no replica's wall clock decides) by the requester's replica; the approver's replica
applies the change and deletes the record in one fenced transaction (service/operator_approvals.py),
a refusal deletes it and spends the id (service/refusals.py), the leader's retention sweeps what is
left (service/retention.py). Actions: set_center_state, start_drill, rollback_plan, set_override,
topology changes (service/topology.py).

Must not: let the requester approve their own change, or judge expiry by a clock.
"""

from __future__ import annotations

from typing import Any

import msgspec

from controlplane.core.drill import DrillSpec
from controlplane.core.model import AdminState

PENDING = "pending/"  # store key prefix, relative to the control plane's prefix


class PendingRecord(msgspec.Struct, frozen=True):
    """A change waiting for a second operator (two-person rule)."""

    request_id: str
    action: str  # "set_center_state", "start_drill" or "rollback_plan"
    center: str
    operator: str
    reason: str
    requested_at: float  # wall time
    expires_at: float  # wall time, informative: the key's store lease decides (F13)
    state: str = ""  # set_center_state: the requested AdminState value
    drill: DrillSpec | None = None
    audit_id: str = ""  # the audit entry of the request, returned again on a repeat
    to_version: int = 0  # rollback_plan: the plan whose routes to hold
    payload: str = ""  # set_override: the Override as JSON (service/overrides.py)


def decode_pending(data: bytes) -> PendingRecord:
    return msgspec.json.decode(data, type=PendingRecord)


class TwoPersonRule(Exception):
    """An approval that the rule refuses: the message says which rule and why."""


def check_approval(pending: PendingRecord, approver: str) -> None:
    """Raise TwoPersonRule unless `approver` may approve `pending`. Expiry is not judged here: an
    expired request's key is gone with its store lease (no replica's wall clock decides, F13)."""
    if approver == pending.operator:
        raise TwoPersonRule(
            f"two-person rule: {approver} requested {pending.request_id} and cannot approve it; "
            "a different operator must approve"
        )


def pending_to_pb(p: PendingRecord) -> Any:
    from callroute.v1 import operator_pb2
    from wire.convert import admin_state_to_pb

    from .drills import spec_to_pb

    out = operator_pb2.PendingChange(
        request_id=p.request_id, action=p.action, center=p.center, reason=p.reason,
        operator=p.operator, requested_at=p.requested_at, expires_at=p.expires_at,
    )
    if p.state:
        out.state = admin_state_to_pb(AdminState(p.state))
    if p.drill is not None:
        out.drill.CopyFrom(spec_to_pb(p.drill))
    return out

