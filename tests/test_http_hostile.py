"""B11 and B12 on the agent's HTTP listeners, with real sockets on loopback.

B11: the switch-facing port changes nothing (the ACD push and fault switches live on the ACD
listener, which wants a token when one is set, and TLS and a token off loopback).
B12: hostile clients (slowloris, a trickled body, idle keep-alive, too many connections, a
pipelining client that never reads, Content-Length with Transfer-Encoding, an endless head) are
closed by the limit that applies and cannot make the server hold more than its limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import threading
import time

import pytest
from test_agent_fakes import ROOT, AgentProc, apoll, http_get, http_post, poll
from test_agent_units import _http_server

from agents.httpserver import MAX_BODY, AcdHttpServer, HttpLimits, _Conn
from agents.main import acd_security
from agents.settings import load_settings
from controlplane.core.model import InvalidInput

LOOKUP = b"GET /v1/route?branch=b0&skill=retail&caller=1 HTTP/1.1\r\nHost: a\r\n\r\n"


async def _serve(srv):  # type: ignore[no-untyped-def]
    return await srv.start("127.0.0.1", 0)


async def _read_all(reader: asyncio.StreamReader, timeout_s: float = 5.0) -> bytes:
    """Everything until the server closes (fails the test if it does not within timeout_s)."""
    out = b""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            part = await asyncio.wait_for(reader.read(65536), max(0.01, deadline - time.monotonic()))
        except ConnectionError:
            return out
        if not part:
            return out
        out += part


async def test_slowloris_head_is_closed_by_the_header_timeout_with_408():
    srv, _ = _http_server(limits=HttpLimits(header_timeout_s=0.3))
    port = await _serve(srv)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /v1/route?branch=b0 HTTP/1.1\r\nHost: a\r\nX-Slow: a")
        t0 = time.monotonic()
        got = await _read_all(r)
        assert got.startswith(b"HTTP/1.1 408") and b'"field":"head"' in got
        assert 0.25 < time.monotonic() - t0 < 3.0
        assert srv.closed["header_timeout"] == 1 and not srv.conns
        w.close()
        # a connection that never sends a byte is held no longer than a slow head (not idle_timeout)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        assert await _read_all(r) == b""
        assert srv.closed["header_timeout"] == 2 and srv.closed["idle_timeout"] == 0
        w.close()
    finally:
        await srv.stop(0)


async def test_trickled_body_is_closed_by_the_body_timeout():
    srv, _ = _http_server(limits=HttpLimits(body_timeout_s=0.3, header_timeout_s=5))
    port = await _serve(srv)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"POST /v1/routes HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n[")
        got = await _read_all(r)
        assert got.startswith(b"HTTP/1.1 408") and b'"field":"body"' in got
        assert srv.closed["body_timeout"] == 1 and srv.closed["header_timeout"] == 0
        w.close()
    finally:
        await srv.stop(0)


async def test_idle_keepalive_connection_is_closed_and_busy_one_is_not():
    srv, _ = _http_server(limits=HttpLimits(idle_timeout_s=0.5))
    port = await _serve(srv)
    try:
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
        busy_r, busy_w = await asyncio.open_connection("127.0.0.1", port)
        idle_w.write(LOOKUP)
        assert (await idle_r.readuntil(b"}")).startswith(b"HTTP/1.1 200")
        t_end = time.monotonic() + 1.5
        while time.monotonic() < t_end:  # a lookup every 0.1 s keeps this one open
            busy_w.write(LOOKUP)
            assert (await asyncio.wait_for(busy_r.readuntil(b"}"), 2)).startswith(b"HTTP/1.1 200")
            await asyncio.sleep(0.1)
        assert await _read_all(idle_r) == b""
        assert srv.closed["idle_timeout"] == 1 and len(srv.conns) == 1
        idle_w.close()
        busy_w.close()
    finally:
        await srv.stop(0)


async def test_connections_beyond_the_limit_are_closed_at_once():
    srv, _ = _http_server(limits=HttpLimits(max_connections=2))
    port = await _serve(srv)
    try:
        held = []
        for _ in range(2):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(LOOKUP)
            assert (await r.readuntil(b"}")).startswith(b"HTTP/1.1 200")
            held.append((r, w))
        r3, w3 = await asyncio.open_connection("127.0.0.1", port)
        w3.write(LOOKUP)
        assert await _read_all(r3, 2.0) == b""  # closed without an answer
        assert srv.closed["connection_limit"] == 1 and len(srv.conns) == 2
        held[0][1].close()
        await apoll(lambda: len(srv.conns) == 1, what="a slot freed")
        r4, w4 = await asyncio.open_connection("127.0.0.1", port)
        w4.write(LOOKUP)
        assert (await r4.readuntil(b"}")).startswith(b"HTTP/1.1 200")
        for _, w in (*held[1:], (r3, w3), (r4, w4)):
            w.close()
    finally:
        await srv.stop(0)


async def test_pipelining_client_that_never_reads_is_not_answered_without_bound():
    """Write backpressure: once our buffer is full the connection is not read; past max_pipeline
    parsed requests it is cut. On main every request was answered into memory (8.3 GB in 5 s)."""
    rendered = [0]

    def metrics() -> bytes:
        rendered[0] += 1
        return b"m" * 20_000

    srv, _ = _http_server(metrics=metrics, limits=HttpLimits(write_timeout_s=1.0))
    port = await _serve(srv)
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        r, w = await asyncio.open_connection(sock=sock)
        w.write(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n" * 5000)  # 1,000 x our write buffer
        peak = 0
        deadline = time.monotonic() + 10
        while srv.conns and time.monotonic() < deadline:
            peak = max(peak, *(c.transport.get_write_buffer_size() for c in srv.conns))
            await asyncio.sleep(0.01)
        assert not srv.conns, "a client that never reads was not cut off"
        assert srv.closed["pipeline_limit"] + srv.closed["write_timeout"] == 1
        assert rendered[0] < 200, rendered[0]  # answered only until backpressure, not 5,000
        assert peak <= srv.limits.write_high + 20_100
        w.close()
    finally:
        await srv.stop(0)


async def test_pipelined_client_that_reads_late_gets_every_answer_in_order():
    """Backpressure pauses and resumes: 50 pipelined 20 kB answers, read only after a pause."""
    n = [0]

    def metrics() -> bytes:
        n[0] += 1
        return b"%06d" % n[0] + b"m" * 20_000

    srv, _ = _http_server(metrics=metrics)
    port = await _serve(srv)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n" * 50)
        await apoll(lambda: any(c.write_paused for c in srv.conns), what="writes paused")
        seen = []
        for _ in range(50):
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            seen.append(int((await r.readexactly(length))[:6]))
        assert seen == list(range(1, 51))
        w.close()
    finally:
        await srv.stop(0)


async def test_a_pipelined_metrics_flood_yields_to_other_connections_lookups():
    """One costly answer (anything but a lookup) per turn of the event loop: a client pipelining
    /metrics does not hold up a switch's lookup on another connection until all its answers are
    rendered (bench hostile: the flooders were the whole of the lookups' p99 under attack, 5x)."""
    rendered = [0]
    at_lookup: list[int] = []

    def metrics() -> bytes:
        rendered[0] += 1
        return b"m" * 100

    srv, _ = _http_server(metrics=metrics)
    route_get = srv.route_get

    def timed_route(query: bytes) -> bytes:
        at_lookup.append(rendered[0])
        return route_get(query)

    srv.route_get = timed_route  # type: ignore[method-assign]
    port = await _serve(srv)
    try:
        ra, wa = await asyncio.open_connection("127.0.0.1", port)
        rb, wb = await asyncio.open_connection("127.0.0.1", port)
        wa.write(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n" * 30)
        deadline = time.monotonic() + 5
        while rendered[0] < 1:  # turn by turn of the loop (apoll's 20 ms would be many turns)
            assert time.monotonic() < deadline, "the flood was never answered"
            await asyncio.sleep(0)
        wb.write(LOOKUP)
        head = await asyncio.wait_for(rb.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        assert at_lookup and at_lookup[0] < 30, at_lookup  # on main: 30, the whole flood first
        # and the flood still gets every answer, in order
        got = b""
        while got.count(b"HTTP/1.1 200") < 30:
            got += await asyncio.wait_for(ra.read(65536), 5)
        assert rendered[0] == 30
        wa.close()
        wb.close()
    finally:
        await srv.stop(0)


def test_body_accumulates_in_linear_time():
    """1 MiB in 20-byte reads: a running length, not a sum over all chunks per chunk (on main:
    ~1.4e9 additions, tens of seconds)."""
    srv, _ = _http_server()
    c = _Conn(srv)
    c.on_message_begin()
    chunk = b"x" * 20
    t0 = time.perf_counter()
    for _ in range(MAX_BODY // 20 + 2):
        c.on_body(chunk)
    assert time.perf_counter() - t0 < 2.0
    assert c.too_big and c.body == []  # past MAX_BODY nothing more is held


async def test_content_length_with_transfer_encoding_is_refused():
    srv, _ = _http_server()
    port = await _serve(srv)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"POST /v1/routes HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + LOOKUP)
        got = await _read_all(r)
        assert got.startswith(b"HTTP/1.1 400") and b'"field":"Transfer-Encoding"' in got
        assert got.count(b"HTTP/1.1 ") == 1  # the smuggled lookup behind it is not answered
        assert srv.closed["bad_request"] == 1
        w.close()
    finally:
        await srv.stop(0)


async def test_endless_request_head_is_refused_with_431():
    srv, _ = _http_server(limits=HttpLimits(max_header_bytes=4096))
    port = await _serve(srv)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /healthz HTTP/1.1\r\n")
        got = b""
        for _ in range(20):  # a client sending headers without end, a kilobyte every 20 ms
            with contextlib.suppress(TimeoutError):
                got += await asyncio.wait_for(r.read(65536), 0.02)
            if got:
                break  # answered
            w.write(b"X-Pad: " + b"p" * 1000 + b"\r\n")
        got += await _read_all(r)
        assert got.startswith(b"HTTP/1.1 431") and srv.closed["header_too_large"] == 1
        w.close()
    finally:
        await srv.stop(0)


# ---------------------------------------------------------------- B11: the ACD listener


async def test_acd_listener_wants_its_token_and_switch_port_has_no_acd_paths():
    calls = []
    acd = AcdHttpServer(admin=lambda body: calls.append(body) or {"state": "closed"}, token=b"s3cret")
    srv, _ = _http_server()
    aport, sport = await _serve(acd), await _serve(srv)
    body = b'{"state": "closed"}'

    async def post(port: int, auth: bytes = b"") -> bytes:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"POST /v1/admin/acd HTTP/1.1\r\nHost: a\r\n%sContent-Length: %d\r\nConnection: close"
                b"\r\n\r\n%s" % (auth, len(body), body))
        out = await _read_all(r)
        w.close()
        return out

    try:
        assert (await post(sport)).startswith(b"HTTP/1.1 404")
        assert (await post(aport)).startswith(b"HTTP/1.1 401")
        assert (await post(aport, b"Authorization: Bearer s3cre\r\n")).startswith(b"HTTP/1.1 401")
        assert (await post(aport, b"Authorization: Bearer s3cretX\r\n")).startswith(b"HTTP/1.1 401")
        assert calls == []
        assert (await post(aport, b"Authorization: Bearer s3cret\r\n")).startswith(b"HTTP/1.1 200")
        assert calls == [body]
    finally:
        await asyncio.gather(acd.stop(0), srv.stop(0))


def test_acd_listener_off_loopback_needs_tls_and_token_or_insecure(tmp_path):
    from controlplane.certs import init_pki

    pki = init_pki(tmp_path / "pki", ["c0"])
    token = tmp_path / "acd.token"
    token.write_text("s3cret\n")
    assert acd_security(load_settings(center="c0")).insecure is False  # loopback default
    with pytest.raises(InvalidInput) as e:
        acd_security(load_settings(center="c0", acd_listen="0.0.0.0:9111"))
    assert e.value.field == "acd_listen"
    # a token is never taken over plaintext off loopback, even with --insecure
    with pytest.raises(InvalidInput) as e:
        acd_security(load_settings(center="c0", acd_listen="0.0.0.0:9111", acd_token_file=str(token),
                                   insecure=True))
    assert e.value.field == "acd_token_file"
    sec = acd_security(load_settings(center="c0", acd_listen="0.0.0.0:9111", insecure=True))
    assert sec.insecure and sec.ssl is None
    sec = acd_security(load_settings(center="c0", acd_listen="10.1.2.3:9111", acd_token_file=str(token),
                                     acd_tls_cert=pki.server_cert, acd_tls_key=pki.server_key))
    assert not sec.insecure and sec.ssl is not None and sec.token == b"s3cret"


async def test_acd_listener_over_tls_takes_the_token(tmp_path):
    import ssl

    from controlplane.certs import init_pki

    pki = init_pki(tmp_path / "pki", ["c0"])
    token = tmp_path / "acd.token"
    token.write_text("s3cret")
    sec = acd_security(load_settings(center="c0", acd_listen="127.0.0.1:0", acd_token_file=str(token),
                                     acd_tls_cert=pki.server_cert, acd_tls_key=pki.server_key))
    acd = AcdHttpServer(admin=lambda body: {"ok": True}, token=sec.token)
    port = await acd.start("127.0.0.1", 0, sec.ssl)
    try:
        ctx = ssl.create_default_context(cafile=pki.ca_cert)
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        w.write(b"POST /v1/admin/acd HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer s3cret\r\n"
                b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
        assert (await _read_all(r)).startswith(b"HTTP/1.1 200")
        w.close()
    finally:
        await acd.stop(0)


def test_agent_refuses_an_open_acd_listener_and_says_so_when_insecure(tmp_path):
    """The agent process: 0.0.0.0 without credentials is refused at start (exit 2, naming the
    field); with --insecure it starts, logs a warning and exports callroute_agent_insecure."""
    def open_agent() -> AgentProc:
        p = AgentProc("c0", tmp_path, grpc=False)
        p.args[p.args.index("--acd-listen") + 1] = f"0.0.0.0:{p.acd_port}"
        return p

    refused = open_agent().start()
    assert refused.proc is not None and refused.proc.wait(30) == 2
    refused.stop()
    assert "acd_listen" in refused.output()
    a = open_agent()
    a.args.append("--insecure")
    a.start()
    try:
        a.wait_listening()
        poll(lambda: 'callroute_agent_insecure{listener="acd"} 1' in http_get(a.http_port, "/metrics")[1],
             what="insecure gauge")
        assert "INSECURE" in a.output()
        # the anonymous POST of issue 15 changes nothing on the switch port
        assert http_post(a.http_port, "/v1/admin/acd", b'{"state": "closed"}')[0] == 404
    finally:
        a.stop()


# ---------------------------------------------------------------- B12 against a real agent process


def test_agent_process_under_hostile_load_holds_memory_and_closes_slow_connections(tmp_path):
    """A smaller version of `callroute bench hostile`: slowloris, never-reading pipeliners and 1 MiB
    trickled bodies at once against a real agent; its RSS stays bounded, every slow connection is
    closed by its timeout, and a well-behaved client's lookups are answered throughout."""
    from bench.hostile import attack, closed_counts, good_client
    from bench.lookup import _rss_mb

    a = AgentProc("c0", tmp_path, grpc=False, extra={"http_header_timeout_s": 1.0,
                                                     "http_body_timeout_s": 1.0,
                                                     "http_write_timeout_s": 1.0})
    a.start()
    try:
        a.wait_listening()
        port = a.http_port
        assert a.proc is not None
        before = _rss_mb(a.proc.pid)[0]
        lat: list[float] = []
        t = threading.Thread(target=lambda: lat.extend(good_client(port, 3.0, rate=50)))
        t.start()
        counts = asyncio.run(attack(port, 4.0, slow=60, flood=4, trickle=12, reconnect=False))
        t.join(30)
        peak = _rss_mb(a.proc.pid)[1]
        assert peak - before < 40, (before, peak)
        # no reconnects: every attacker connection was closed by the server before the end
        assert counts["slowloris"] == {"opened": 60, "closed_by_server": 60}, counts
        assert counts["trickle"] == {"opened": 12, "closed_by_server": 12}, counts
        assert counts["flood"] == {"opened": 4, "closed_by_server": 4}, counts
        closed = closed_counts(port)
        assert closed["header_timeout"] == 60 and closed["body_timeout"] == 12, closed
        assert closed["pipeline_limit"] + closed["write_timeout"] == 4, closed
        assert len(lat) >= 100 and max(lat) < 2.0  # answered all along (no request waited seconds)
    finally:
        a.stop()
    assert a.proc.returncode == 0 or a.proc.returncode == -15, a.output()[-2000:]


def test_agent_raises_its_open_files_limit_to_cover_the_connection_limits():
    """With a soft limit below 2 x http_max_connections accept() would fail with EMFILE before the
    connection limit closes anything; the agent raises it (in a child: limits are per process)."""
    code = ("import resource; soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)); "
            "from agents.main import raise_fd_limit; raise_fd_limit(2 * 1024 + 256); "
            "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == 2 * 1024 + 256
