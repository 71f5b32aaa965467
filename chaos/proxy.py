"""A TCP fault proxy for the chaos harness: put it between any two parts and break the link at will.

    proxy = FaultProxy("127.0.0.1", etcd_port)      # listens on 127.0.0.1, a free port
    port = await proxy.start()
    proxy.set(Fault(latency_s=0.5, jitter_s=0.2))    # 500 ms +- 200 ms each way (F10)
    proxy.set(Fault(mode=BLACKHOLE))                 # bytes vanish, connections stay open (F11)
    proxy.partition()                                # nothing flows until heal(), nothing lost (F8)
    proxy.reset()                                    # RST every open connection
    proxy.down(); proxy.up()                         # refuse connections, then accept again
    proxy.heal()                                     # pass everything through again

Faults apply to open connections and new ones alike, and change at run time. Bytes keep their order
in each direction whatever the latency (a later chunk is never delivered before an earlier one).
This module is test tooling: it listens on loopback only, must not be imported by production code,
and never reads the wall clock (delivery times are loop-monotonic).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct

import msgspec

from controlplane.core.model import InvalidInput

PASS = "pass"
BLACKHOLE = "blackhole"  # accept and read, forward nothing: a half-open peer, bytes lost
# stop reading and writing: bytes wait in kernel buffers and flow again on heal, as TCP retransmits
# them after a real network partition heals
PARTITION = "partition"
MODES = (PASS, BLACKHOLE, PARTITION)
# One read from a socket: large enough for a gRPC frame burst, small enough that slicing bites.
READ_CHUNK = 65536
# Latency beyond a minute is a broken test, not a slow network.
MAX_LATENCY_S = 60.0
# Bytes held per direction while latency delays them; more and the proxy stops reading (backpressure)
# rather than buffering a whole etcd snapshot in memory.
MAX_INFLIGHT_BYTES = 8 << 20


class Fault(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the proxy does to bytes, in both directions."""

    mode: str = PASS
    # each chunk is delayed by latency_s +- jitter_s (uniform), order kept
    latency_s: float = 0.0
    jitter_s: float = 0.0
    # > 0: forward at most this many bytes at a time, waiting slice_delay_s between slices (slow peer)
    slice_bytes: int = 0
    slice_delay_s: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidInput("mode", self.mode, f"must be one of {', '.join(MODES)}")
        for name in ("latency_s", "jitter_s", "slice_delay_s"):
            v = getattr(self, name)
            if not 0.0 <= v <= MAX_LATENCY_S:
                raise InvalidInput(name, v, f"must be within [0, {MAX_LATENCY_S}]")
        if self.jitter_s > self.latency_s:
            raise InvalidInput("jitter_s", self.jitter_s, "must not exceed latency_s (no negative delays)")
        if not 0 <= self.slice_bytes <= READ_CHUNK:
            raise InvalidInput("slice_bytes", self.slice_bytes, f"must be within [0, {READ_CHUNK}]")


class _Link:
    """One proxied connection: two pumps, each with a reader and an ordered delayed writer."""

    def __init__(self, proxy: FaultProxy, client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for src, dst in ((self.client[0], self.upstream[1]), (self.upstream[0], self.client[1])):
            q: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
            budget = asyncio.Semaphore(MAX_INFLIGHT_BYTES // READ_CHUNK)
            self.tasks.append(asyncio.ensure_future(self._read(src, q, budget)))
            writer = asyncio.ensure_future(self._write(dst, q, budget))
            # a writer ends after its reader's EOF has been delivered, or on a write error
            writer.add_done_callback(self._done)
            self.tasks.append(writer)

    def _done(self, t: asyncio.Task[None]) -> None:
        # either direction ending (EOF, error, reset) ends the link: a proxy must not keep half of it
        if not t.cancelled():
            self.close(abort=False)

    async def _read(self, src: asyncio.StreamReader, q: asyncio.Queue[tuple[float, bytes] | None],
                    budget: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        last_at = 0.0
        try:
            while True:
                await budget.acquire()
                await self.proxy.flowing.wait()
                data = await src.read(READ_CHUNK)
                if not data:
                    break
                f = self.proxy.fault
                if f.mode == BLACKHOLE:
                    budget.release()
                    continue
                delay = f.latency_s + (self.proxy.rng.uniform(-f.jitter_s, f.jitter_s) if f.jitter_s else 0.0)
                # order is kept: a chunk never overtakes the one before it
                last_at = max(last_at, loop.time() + delay)
                q.put_nowait((last_at, data))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            q.put_nowait(None)

    async def _write(self, dst: asyncio.StreamWriter, q: asyncio.Queue[tuple[float, bytes] | None],
                     budget: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                item = await q.get()
                if item is None:
                    with contextlib.suppress(OSError):
                        if dst.can_write_eof():
                            dst.write_eof()
                    return
                at, data = item
                wait = at - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self.proxy.flowing.wait()
                f = self.proxy.fault
                if f.mode == BLACKHOLE:
                    budget.release()
                    continue  # bytes read before the blackhole started vanish too
                if f.slice_bytes:
                    for i in range(0, len(data), f.slice_bytes):
                        dst.write(data[i:i + f.slice_bytes])
                        await dst.drain()
                        if f.slice_delay_s:
                            await asyncio.sleep(f.slice_delay_s)
                else:
                    dst.write(data)
                    await dst.drain()
                budget.release()
        except OSError:
            pass

    def close(self, abort: bool) -> None:
        for _, w in (self.client, self.upstream):
            if abort:
                sock = w.get_extra_info("socket")
                if sock is not None:
                    # linger 0: close sends RST, the peer sees "connection reset", not a clean FIN
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                w.transport.abort()
            else:
                w.close()
        for t in self.tasks:
            if not t.done():
                t.cancel()
        self.proxy.links.discard(self)


class FaultProxy:
    """Forwards 127.0.0.1:port to target_host:target_port, breaking the link as told."""

    def __init__(self, target_host: str, target_port: int, *, listen_port: int = 0, seed: int = 1,
                 connect_timeout_s: float = 2.0) -> None:
        self.target = (target_host, target_port)
        self.port = listen_port
        self.fault = Fault()
        # cleared while partitioned: pumps wait on it before reading and before writing
        self.flowing = asyncio.Event()
        self.flowing.set()
        # jitter is seeded: a failing run can be repeated
        self.rng = random.Random(seed)
        self.connect_timeout_s = connect_timeout_s
        self.links: set[_Link] = set()
        self.accepted = 0
        self._server: asyncio.base_events.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up = await asyncio.wait_for(asyncio.open_connection(*self.target), self.connect_timeout_s)
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        link = _Link(self, (reader, writer), up)
        self.links.add(link)
        link.start()

    # ------------------------------------------------------------ run-time control

    def set(self, fault: Fault) -> None:
        self.fault = fault
        if fault.mode == PARTITION:
            self.flowing.clear()
        else:
            self.flowing.set()

    def heal(self) -> None:
        self.set(Fault())

    def blackhole(self) -> None:
        self.set(Fault(mode=BLACKHOLE))

    def partition(self) -> None:
        self.set(Fault(mode=PARTITION))

    def reset(self) -> int:
        """RST every open connection; returns how many. New connections are still accepted."""
        links = list(self.links)
        for link in links:
            link.close(abort=True)
        return len(links)

    def down(self) -> None:
        """Stop listening and reset every connection: the peer looks dead (connection refused)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self.reset()

    async def up(self) -> None:
        if self._server is None:
            await self.start()

    async def stop(self) -> None:
        self.down()
        await asyncio.sleep(0)
