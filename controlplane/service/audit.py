"""The audit entry, one record under `audit/<id>` per operator action or leader action taken on its
own (a rollback hold ended, a drill step). Written by the operator API, the leader and the drill
runner, read by AuditLog: it lives here so none of those imports another for it.

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
