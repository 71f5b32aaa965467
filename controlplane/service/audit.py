"""The audit entry, one record under `audit/<id>` per operator action or leader action taken on its
own (a rollback hold ended, a drill step), and the request record under `requests/<id>` that makes
an operator's retry return the first answer. Written by the operator API, the leader and the drill
runner, read by AuditLog and swept by retention: they live here so none of those imports another.

Must not: import the operator API, the leader or the drill runner (they import this).
"""

from __future__ import annotations

import msgspec


class AuditRecord(msgspec.Struct, frozen=True):
    id: str
    at: float
    operator: str  # "leader:<replica>" for an action the leader took on its own
    action: str
    target: str
    reason: str
    result: str
    request_id: str = ""


class RequestRecord(msgspec.Struct, frozen=True):
    """The first answer to a request_id, returned again on a retry."""

    audit_id: str
    message: str
    action: str
    # what the id was first used for and by whom: it answers only that request again (B13); ""
    # in records stored before ids were bound
    what: str = ""
    operator: str = ""
