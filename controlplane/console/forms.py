"""The console's request rules, shared by app.py (the routing table) and topology.py (its pages):
the HTTP answer a refusal becomes, the bounded form reader with its origin check, and fields read
with errors that name the field and the value.

Must not: keep state, call the control plane, or render anything.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

# every form of the console is a few fields of text; a reason is at most 1000 characters
MAX_BODY = 64 * 1024
MAX_REASON = 1000


class Refused(Exception):
    """An HTTP answer other than the page: status and a message shown to the operator."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_form(request: Request, max_body: int = MAX_BODY) -> dict[str, str]:
    """The POSTed form, bounded; a POST from another site's page (its Origin says so) is refused
    before anything is read: with the CSRF token, this also covers the login form."""
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise Refused(403, f"origin={origin!r}: not this console")
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise Refused(411, "a form needs a Content-Length")
    if int(length) > max_body:
        raise Refused(413, f"form of {length} bytes: more than {max_body}")
    form = await request.form(max_files=0, max_fields=32, max_part_size=max_body)
    return {k: v for k, v in form.items() if isinstance(v, str)}


def field_value(form: dict[str, str], name: str, *, required: bool = True) -> str:
    v = form.get(name, "").strip()
    if required and not v:
        raise Refused(400, f"{name}={v!r}: required")
    return v


def int_field(form: dict[str, str], name: str, low: int = 0) -> int:
    raw = form.get(name, "").strip()
    try:
        v = int(raw)
    except ValueError:
        raise Refused(400, f"{name}={raw!r}: must be a whole number") from None
    if v < low:
        raise Refused(400, f"{name}={v}: must be >= {low}")
    return v


def float_field(form: dict[str, str], name: str, default: float) -> float:
    raw = form.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise Refused(400, f"{name}={raw!r}: must be a number") from None


def reason_field(form: dict[str, str]) -> str:
    """The reason every change carries to the audit trail: required, bounded as the server bounds it."""
    reason = field_value(form, "reason")
    if len(reason) > MAX_REASON:
        raise Refused(400, f"reason: {len(reason)} characters, more than {MAX_REASON}")
    return reason


def change_message(what: str, reply: Any, request_id: str) -> str:
    """The flash line for a change's answer: applied, or waiting for a second operator."""
    from callroute.v1 import operator_pb2 as pb

    if reply.status == pb.CHANGE_STATUS_PENDING_APPROVAL:
        return f"{what}: PENDING approval by a second operator, NOT applied yet (request {request_id})"
    if reply.status == pb.CHANGE_STATUS_APPLIED:
        version = getattr(reply, "plan_version", None)  # a drill's answer has none of its own
        where = ("no plan change" if version is None else f"plan v{version}" if version
                 else "plan not yet published")
        return f"{what}: APPLIED ({where}; request {request_id})"
    raise Refused(502, f"{what}: unexpected status {reply.status}: {getattr(reply, 'message', '')}")
