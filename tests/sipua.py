"""A small SIP user agent over UDP for the Kamailio end-to-end tests: a server (UAS) that plays a
center's ACD and a client (UAC) that plays the bank's switch/IVR placing calls.

    python tests/sipua.py uas --port P --name CENTER --record FILE.jsonl [--code 200]

The UAS answers every INVITE with one final reply (200 by default; `--code 180` rings forever: a
center whose seats never pick up, answered 487 only when the proxy CANCELs) and appends one JSON line per
new INVITE to its record file (call id, branch, skill and the X-Callroute-* headers the proxy
added), flushed at once so a test can read it while the process runs (and after it is killed).
`SipClient.invite` sends one INVITE, retransmits it on RFC 3261 timer A until a final reply, ACKs it
and returns the reply and the INVITE -> final-reply time.

Must not: pretend to be a full SIP stack (no dialogs beyond one INVITE/ACK, no SDP, no TCP, no
authentication), or listen anywhere but on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field

# RFC 3261 T1: the first INVITE retransmission over UDP; doubling after that (timer A).
T1_S = 0.5
# One SIP message over UDP stays under the path MTU (RFC 3261 18.1.1); 64 KiB reads any datagram.
MAX_DATAGRAM = 65535
# Compact header forms (RFC 3261 7.3.3) a proxy may use: parse them as the long names.
COMPACT = {"i": "call-id", "f": "from", "t": "to", "v": "via", "m": "contact", "l": "content-length"}
HOST = "127.0.0.1"


@dataclass
class SipMessage:
    """One parsed request or response; header names lower-case, values in arrival order."""

    first_line: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @property
    def is_response(self) -> bool:
        return self.first_line.startswith("SIP/2.0 ")

    @property
    def status(self) -> int:
        return int(self.first_line.split(" ", 2)[1]) if self.is_response else 0

    @property
    def reason(self) -> str:
        parts = self.first_line.split(" ", 2)
        return parts[2] if self.is_response and len(parts) > 2 else ""

    @property
    def method(self) -> str:
        return "" if self.is_response else self.first_line.split(" ", 1)[0]

    def get(self, name: str, default: str = "") -> str:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]


def parse(data: bytes) -> SipMessage:
    """Parse one datagram; raises ValueError on anything that is not a SIP message."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", errors="replace").split("\r\n")
    if not lines or not lines[0]:
        raise ValueError("empty SIP message")
    msg = SipMessage(lines[0], body=body)
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and msg.headers:  # folded continuation line
            k, v = msg.headers[-1]
            msg.headers[-1] = (k, v + " " + line.strip())
            continue
        k, sep, v = line.partition(":")
        if not sep:
            raise ValueError(f"bad header line {line!r}")
        k = k.strip().lower()
        msg.headers.append((COMPACT.get(k, k), v.strip()))
    return msg


def _tag() -> str:
    return uuid.uuid4().hex[:10]


def build_response(req: SipMessage, code: int, reason: str, to_tag: str, contact: str) -> bytes:
    lines = [f"SIP/2.0 {code} {reason}"]
    lines += [f"Via: {v}" for v in req.get_all("via")]
    to = req.get("to")
    if code > 100 and ";tag=" not in to:
        to = f"{to};tag={to_tag}"
    lines += [f"From: {req.get('from')}", f"To: {to}", f"Call-ID: {req.get('call-id')}",
              f"CSeq: {req.get('cseq')}"]
    if contact and req.method == "INVITE" and 200 <= code < 300:
        lines.append(f"Contact: <{contact}>")
    lines += ["Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


# ---------------------------------------------------------------------------------------- server


def run_uas(port: int, name: str, record: str, code: int) -> None:
    """Serve until killed: answer INVITEs with `code`, record each new one in `record`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, port))
    contact = f"sip:{name}@{HOST}:{port}"
    # call-id -> (to-tag, reply bytes): a retransmitted INVITE gets the same reply, recorded once
    answered: dict[str, bytes] = {}
    # call-id -> the INVITE, while it rings (code 180): a CANCEL ends it with 487
    ringing: dict[str, SipMessage] = {}
    reason = {180: "Ringing", 200: "OK", 486: "Busy Here", 503: "Service Unavailable"}.get(code, "Answer")
    with open(record, "a", encoding="utf-8") as out:
        print(json.dumps({"event": "listening", "port": port}), flush=True)
        while True:
            data, addr = sock.recvfrom(MAX_DATAGRAM)
            try:
                msg = parse(data)
            except ValueError:
                continue
            if msg.is_response or msg.method == "ACK":
                continue
            if msg.method == "CANCEL" and msg.get("call-id") in ringing:
                sock.sendto(build_response(msg, 200, "OK", _tag(), ""), addr)
                invite = ringing.pop(msg.get("call-id"))
                sock.sendto(build_response(invite, 487, "Request Terminated", _tag(), ""), addr)
                continue
            if msg.method != "INVITE":
                sock.sendto(build_response(msg, 200, "OK", _tag(), ""), addr)
                continue
            cid = msg.get("call-id")
            if code == 180 and cid not in answered:
                ringing[cid] = msg
            reply = answered.get(cid)
            if reply is None:
                reply = build_response(msg, code, reason, _tag(), contact)
                answered[cid] = reply
                out.write(json.dumps({
                    "center": name, "call_id": cid, "ruri": msg.first_line.split(" ")[1],
                    "branch": msg.get("x-branch"), "skill": msg.get("x-skill"),
                    "lookup_us": msg.get("x-callroute-lookup-us"), "plan": msg.get("x-callroute-plan"),
                    "requery": msg.get("x-callroute-requery"),
                    # the last one added is the call's priority now (a re-query replaces it)
                    "priority": (msg.get_all("x-callroute-priority") or [None])[-1],
                    "priorities": msg.get_all("x-callroute-priority"),
                    "treatment": msg.get("x-callroute-treatment"), "prompt": msg.get("x-callroute-prompt"),
                    "at": time.monotonic()}) + "\n")
                out.flush()
            sock.sendto(reply, addr)


def read_records(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


# ---------------------------------------------------------------------------------------- client


@dataclass
class CallResult:
    status: int
    reason: str
    reply: SipMessage
    elapsed_s: float  # INVITE sent -> final reply received


class SipClient:
    """The calling side: one UDP socket on 127.0.0.1, one INVITE transaction at a time."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> SipClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def invite(self, proxy: tuple[str, int], user: str, caller: str, headers: dict[str, str] | None = None,
               timeout_s: float = 10.0) -> CallResult:
        """One INVITE via `proxy` to sip:user@proxy; returns the final reply (raises TimeoutError)."""
        branch = "z9hG4bK" + _tag()
        cid = uuid.uuid4().hex
        ftag = _tag()
        ruri = f"sip:{user}@{proxy[0]}:{proxy[1]}"
        lines = [f"INVITE {ruri} SIP/2.0",
                 f"Via: SIP/2.0/UDP {HOST}:{self.port};branch={branch};rport",
                 "Max-Forwards: 70",
                 f"From: <sip:{caller}@{HOST}>;tag={ftag}",
                 f"To: <{ruri}>",
                 f"Call-ID: {cid}",
                 "CSeq: 1 INVITE",
                 f"Contact: <sip:{caller}@{HOST}:{self.port}>"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        lines += ["Content-Length: 0", "", ""]
        data = "\r\n".join(lines).encode()
        start = time.monotonic()
        deadline = start + timeout_s
        interval = T1_S
        self.sock.sendto(data, proxy)
        resend_at = start + interval
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError(f"no final reply to INVITE {cid} within {timeout_s} s")
            self.sock.settimeout(max(0.001, min(resend_at, deadline) - now))
            try:
                raw, addr = self.sock.recvfrom(MAX_DATAGRAM)
            except TimeoutError:
                self.sock.sendto(data, proxy)
                interval *= 2
                resend_at = time.monotonic() + interval
                continue
            got = time.monotonic()
            try:
                msg = parse(raw)
            except ValueError:
                continue
            if not msg.is_response or msg.get("call-id") != cid or msg.status < 200:
                continue
            self._ack(msg, ruri, branch, proxy)
            return CallResult(msg.status, msg.reason, msg, got - start)

    def _ack(self, reply: SipMessage, ruri: str, branch: str, proxy: tuple[str, int]) -> None:
        """ACK a final reply: hop-by-hop to the proxy for a failure, end to end for a 2xx."""
        target = proxy
        if 200 <= reply.status < 300:
            contact = reply.get("contact").strip("<>")
            hostport = contact.split("@", 1)[-1].split(";", 1)[0]
            host, _, port = hostport.partition(":")
            target = (host, int(port or 5060))
            ruri = contact
            branch = "z9hG4bK" + _tag()  # a 2xx ACK is a transaction of its own
        lines = [f"ACK {ruri} SIP/2.0",
                 f"Via: SIP/2.0/UDP {HOST}:{self.port};branch={branch};rport",
                 "Max-Forwards: 70",
                 f"From: {reply.get('from')}",
                 f"To: {reply.get('to')}",
                 f"Call-ID: {reply.get('call-id')}",
                 f"CSeq: {reply.get('cseq').split(' ', 1)[0]} ACK",
                 "Content-Length: 0", "", ""]
        self.sock.sendto("\r\n".join(lines).encode(), target)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sipua")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("uas", help="answer INVITEs as one center and record them")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--record", required=True)
    s.add_argument("--code", type=int, default=200)
    args = p.parse_args(argv)
    try:
        run_uas(args.port, args.name, args.record, args.code)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
