"""The agent's last-known-good plan: check, compile, persist, swap; and the WatchPlan stream.

- `PlanStore` persists the last good plan atomically (write tmp, fsync, rename, fsync dir), with a
  checksum, so a restarted agent serves routes before it reaches any control plane.
- `PlanCache` holds the one reference lookups read (`served`). A pushed plan is accepted only when
  newer and consistent; it is compiled off the event loop and swapped in one assignment, so a
  lookup sees the old plan or the new one, never a mix.
- `PlanWatcher` keeps a WatchPlan stream to any control-plane replica, ACKs or NACKs every push.

Must not: mutate a served plan, block the event loop with compile or disk I/O, or read the wall
clock (ages are monotonic).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import xxhash

from controlplane.core.backoff import Backoff
from controlplane.core.model import InvalidInput, Plan, Topology

log = logging.getLogger("callroute.agent.plan")

PLAN_FILE = "last_good_plan.msgpack"
_MAGIC = b"CRPLAN1\n"
# A national plan is ~100 KB; a file a thousand times that is not ours.
MAX_PLAN_FILE = 128 << 20
# NACK reasons go into a protobuf string and operators' logs: keep them readable.
MAX_REASON = 2000
# Weight sums may drift by rounding; same tolerance as controlplane.core.plan.
WEIGHT_SUM_TOL = 1e-3


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves the old file or the new one, never a mix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class PlanStore:
    """The last good plan on disk, checksummed: a torn or foreign file is ignored, never served."""

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / PLAN_FILE

    def save(self, plan: Plan) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        body = msgspec.msgpack.encode(plan)
        write_atomic(self.path, _MAGIC + xxhash.xxh64_hexdigest(body).encode() + b"\n" + body)

    def load(self) -> Plan | None:
        try:
            if self.path.stat().st_size > MAX_PLAN_FILE:
                log.error("plan file %s is too large; ignoring it", self.path)
                return None
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        head, _, body = raw.partition(b"\n")
        digest, _, body = body.partition(b"\n")
        if head + b"\n" != _MAGIC or digest.decode("ascii", "replace") != xxhash.xxh64_hexdigest(body):
            log.error("plan file %s is torn or not ours; ignoring it", self.path)
            return None
        try:
            return msgspec.msgpack.decode(body, type=Plan)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            log.error("plan file %s does not decode (%s); ignoring it", self.path, e)
            return None


def self_consistent(plan: Plan) -> list[str]:
    """The checks possible without a topology: weights, closed targets, duplicates."""
    errors: list[str] = []
    closed = set(plan.closed)
    seen: set[tuple[str, str]] = set()
    for r in plan.routes:
        where = f"route {r.branch}/{r.skill}"
        if (r.branch, r.skill) in seen:
            errors.append(f"{where}: appears twice")
        seen.add((r.branch, r.skill))
        if not r.targets and not r.overload_action:
            errors.append(f"{where}: no targets and no overload action")
        for ts in (r.targets, r.vip_targets):
            total = 0.0
            for t in ts:
                if t.center in closed:
                    errors.append(f"{where}: target {t.center!r} is closed in this plan")
                if not (isinstance(t.weight, float | int) and math.isfinite(t.weight) and 0 < t.weight <= 1):
                    errors.append(f"{where}: weight of {t.center!r} is {t.weight!r}")
                else:
                    total += t.weight
            if ts and abs(total - 1.0) > WEIGHT_SUM_TOL:
                errors.append(f"{where}: weights sum to {total:.6f}, not 1")
    return errors


class Served(msgspec.Struct, frozen=True):
    """What lookups read: one immutable snapshot, replaced as a whole."""

    plan: Plan
    compiled: Any  # controlplane.core.lookup.CompiledPlan
    version: int


# Ring tables kept besides the plan being compiled: those of the plans compiled just before it. A
# close then a reopen, or a change and its rollback, come back to tables of the last two plans;
# older ones are garbage. An LRU by count (1,024 tables of 64 KiB) filled at a new weighted target
# set most seconds under live weights: +11.6% RSS over the second half of a 2-minute soak (L5).
RING_GENERATIONS = 2


def plan_ring_cache() -> Any:
    """A RingCache that keeps only the rings of the plan being compiled and RING_GENERATIONS plans
    before it (call start_plan() before compiling each plan)."""
    from controlplane.core.ring import CanonicalKey, Ring, RingCache, build_table

    class PlanRingCache(RingCache):
        __slots__ = ("_gens",)

        def __init__(self) -> None:
            super().__init__(1)
            self._gens: list[dict[CanonicalKey, Ring]] = [{}]  # newest first

        def start_plan(self) -> None:
            self._gens = [{}, *self._gens[:RING_GENERATIONS]]

        def get_key(self, key: CanonicalKey) -> Ring:
            for g in self._gens:
                ring = g.get(key)
                if ring is not None:
                    self.hits += 1
                    self._gens[0][key] = ring
                    return ring
            self.misses += 1
            ring = build_table(key)
            self._gens[0][key] = ring
            return ring

        def __len__(self) -> int:
            return len({k for g in self._gens for k in g})

    return PlanRingCache()


class PlanCache:
    """Last good plan: accept only newer and consistent plans; swap one reference."""

    def __init__(self, topology: Topology | None = None, store: PlanStore | None = None,
                 clock: Callable[[], float] = time.monotonic, confirm_by_stream: bool = True) -> None:
        self.topology = topology
        self.store = store
        self.clock = clock
        self.served: Served | None = None
        self.applied_at: float | None = None  # monotonic time of the last swap
        # monotonic time the plan was last known current (a push, or a live watch stream)
        self.confirmed_at: float = clock()
        self.live = False
        # how the served plan is known to be current: an open watch stream (the in-process client,
        # which has nothing else), or, in the agent, report acks naming the leader's latest
        # version: a control plane that lost its store stops acking, and the age shows it
        self.confirm_by_stream = confirm_by_stream
        self.restored = False
        self.accepted = 0
        self.rejected = 0
        self.last_error = ""
        self._topo_hash: str | None = None
        self._ring_cache: Any = None
        # callbacks after each swap (the HTTP server drops its response cache)
        self.on_swap: list[Callable[[Served], None]] = []
        # live topologies carried by plans (issue 18), by hash: checked once, switched to with the
        # plan that carries it; then the callbacks (the reporter's and ACD's known ids)
        self._carried: dict[str, Topology] = {}
        self.on_topology: list[Callable[[Topology], None]] = []

    @property
    def version(self) -> int:
        s = self.served
        return s.version if s is not None else 0

    def set_live(self, live: bool) -> None:
        # while a watch stream is up the served plan is the current one (the control plane pushes
        # every newer one); from the moment it drops, the plan ages
        if self.confirm_by_stream:
            self.live = live
            self.confirmed_at = self.clock()

    def confirm(self, latest_version: int) -> None:
        """The control plane says `latest_version` is its newest plan: ours is current if not older."""
        if self.served is not None and latest_version <= self.served.version:
            self.confirmed_at = self.clock()

    def age(self, now: float | None = None) -> float:
        """Seconds since the served plan was last known to be the newest one."""
        if self.live:
            return 0.0
        return max(0.0, (self.clock() if now is None else now) - self.confirmed_at)

    def check(self, plan: Plan) -> str:
        """Why `plan` may not be served ("" when it may)."""
        if not isinstance(plan.version, int) or plan.version <= 0:
            return f"version={plan.version!r}: must be a positive integer"
        if plan.version <= self.version:
            return f"version={plan.version}: not newer than the served version {self.version}"
        if self.topology is not None:
            from controlplane.core.plan import consistent

            topology = self.topology
            if plan.topology_hash:
                want = self._topology_hash()
                if want and plan.topology_hash != want:
                    if not plan.topology_json:
                        return (f"topology_hash={plan.topology_hash!r}: this agent's topology is "
                                f"{want!r}")
                    # a live topology (issue 18): the plan carries it; checked like a file at start
                    got = self._carried_topology(plan)
                    if isinstance(got, str):
                        return got
                    topology = got
            errors = consistent(plan, topology)
        else:
            errors = self_consistent(plan)
        if errors:
            more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
            return ("; ".join(errors[:3]) + more)[:MAX_REASON]
        return ""

    def _carried_topology(self, plan: Plan) -> Topology | str:
        """The topology `plan` carries, checked, or why it is refused."""
        got = self._carried.get(plan.topology_hash)
        if got is not None:
            return got
        from controlplane.core.topology import parse_topology, topology_hash

        source = f"plan {plan.version} topology v{plan.topology_version}"
        try:
            topo = parse_topology(msgspec.json.decode(plan.topology_json), source)
        except (msgspec.DecodeError, InvalidInput) as e:
            return f"topology_json: {e}"[:MAX_REASON]
        if topology_hash(topo) != plan.topology_hash:
            return (f"topology_json: its hash {topology_hash(topo)!r} is not the plan's topology_hash "
                    f"{plan.topology_hash!r}")
        if len(self._carried) >= 4:  # a few at most: the one in use and the next
            self._carried.clear()
        self._carried[plan.topology_hash] = topo
        return topo

    def _topology_hash(self) -> str:
        if self._topo_hash is None and self.topology is not None:
            try:
                from controlplane.core.topology import topology_hash

                self._topo_hash = topology_hash(self.topology)
            except ImportError:
                self._topo_hash = ""
        return self._topo_hash or ""

    def compile(self, plan: Plan) -> Served:
        """The slow part (ring tables): call it off the event loop."""
        from controlplane.core.lookup import CompiledPlan

        if self._ring_cache is None:
            self._ring_cache = plan_ring_cache()
        self._ring_cache.start_plan()
        return Served(plan=plan, compiled=CompiledPlan.compile(plan, cache=self._ring_cache),
                      version=plan.version)

    def swap(self, served: Served, now: float | None = None) -> None:
        new_topology = None
        h = served.plan.topology_hash
        if self.topology is not None and h and h != self._topology_hash():
            new_topology = self._carried.get(h)
        if new_topology is not None:
            # the topology and the plan made from it switch together (issue 18)
            self.topology = new_topology
            self._topo_hash = h
        self.served = served
        self.applied_at = self.confirmed_at = self.clock() if now is None else now
        for cb in self.on_swap:
            cb(served)
        if new_topology is not None:
            log.info("topology v%d (%s) from plan %d", served.plan.topology_version, h, served.version)
            for tcb in self.on_topology:
                tcb(new_topology)

    def offer(self, plan: Plan, persist: bool = True) -> str:
        """Check, compile, persist and swap in one go (blocking); returns the NACK reason or ""."""
        why = self.check(plan)
        if why:
            self.rejected += 1
            self.last_error = why
            return why
        try:
            served = self.compile(plan)
        except InvalidInput as e:
            self.rejected += 1
            self.last_error = f"compile: {e}"
            return self.last_error
        if persist and self.store is not None:
            self.store.save(plan)
        self.swap(served)
        self.accepted += 1
        return ""

    async def offer_async(self, plan: Plan) -> str:
        """`offer` with the checks, compile and fsync in a worker thread; the swap on the loop."""
        why = await asyncio.to_thread(self.check, plan)
        if not why:
            try:
                served = await asyncio.to_thread(self.compile, plan)
            except InvalidInput as e:
                why = f"compile: {e}"
        if why:
            self.rejected += 1
            self.last_error = why
            return why
        if plan.version <= self.version:  # another push won the race while we compiled
            return f"version={plan.version}: not newer than the served version {self.version}"
        if self.store is not None:
            await asyncio.to_thread(self.store.save, plan)
        self.swap(served)
        self.accepted += 1
        return ""

    def restore(self) -> bool:
        """Serve the persisted last good plan, if there is one and it still passes the checks."""
        if self.store is None:
            return False
        plan = self.store.load()
        if plan is None:
            return False
        why = self.offer(plan, persist=False)
        if why:
            log.error("persisted plan v%s refused: %s", plan.version, why)
            return False
        self.restored = True
        log.info("serving persisted plan v%s before reaching any control plane", plan.version)
        return True


# ---------------------------------------------------------------- the WatchPlan stream


def channel_options(keepalive_time_s: float, keepalive_timeout_s: float) -> list[tuple[str, Any]]:
    """Client channel options: keepalive pings find a half-open peer within time + timeout (F11).

    Why grpc.http2.ping_timeout_ms (traced with GRPC_TRACE=http_keepalive,http2_ping, gRPC 1.85):
    the keepalive ping does go out keepalive_time after the peer falls silent, even on a stream the
    reporter keeps writing to, but core arms its timeout from ping_timeout_ms (default 60 s), not
    keepalive_timeout_ms ("Set ping timeout timer of 60000ms"), as it does for a flow-control (BDP)
    ping already in flight. So keepalive never fired in F11: the dead peer was found by the
    reporter's 5 s ack watchdog (5.4 s against 2 + 1 s). With ping_timeout_ms =
    keepalive_timeout_ms any unanswered ping closes the transport keepalive_timeout after it was
    sent: a dead peer is found within keepalive time + timeout (tests/test_chaos_keepalive.py).
    """
    ka_timeout_ms = int(keepalive_timeout_s * 1000)
    return [
        ("grpc.keepalive_time_ms", int(keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", ka_timeout_ms),
        ("grpc.http2.ping_timeout_ms", ka_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # reconnect ourselves with our own jittered backoff; keep gRPC's short
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        ("grpc.enable_retries", 0),
    ]


class PlanWatcher:
    """Keeps a WatchPlan stream open to some control-plane replica; applies and ACKs pushes."""

    def __init__(self, cache: PlanCache, endpoints: Sequence[str], center: str, node: str, *,
                 keepalive_time_s: float = 10.0, keepalive_timeout_s: float = 5.0,
                 connect_deadline_s: float = 5.0, backoff_initial_s: float = 0.1,
                 backoff_max_s: float = 3.0, seed: int | None = None, tls: Any = None) -> None:
        self.cache = cache
        # wire.tls.ClientTLS, or None for plaintext
        self.tls = tls
        self.endpoints = list(endpoints)
        self.center = center
        self.node = node
        self.keepalive = (keepalive_time_s, keepalive_timeout_s)
        self.connect_deadline_s = connect_deadline_s
        self.backoff = Backoff(backoff_initial_s, backoff_max_s, random.Random(seed))
        self.connected = False
        self.endpoint = ""
        self.pushes = 0
        self.nacks = 0
        self.reconnects = 0
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        if not self.endpoints:
            await self._stop.wait()
            return
        i = 0
        while not self._stop.is_set():
            ep = self.endpoints[i % len(self.endpoints)]
            try:
                await self._session(ep)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any stream failure means: next endpoint, later
                log.info("plan stream to %s ended: %s", ep, _short(e))
            self.connected = False
            i += 1
            self.reconnects += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.backoff.next())

    async def _session(self, ep: str) -> None:
        from callroute.v1 import plan_pb2, plan_pb2_grpc
        from wire.convert import plan_from_pb
        from wire.tls import open_channel

        opts = channel_options(*self.keepalive)
        async with open_channel(ep, self.tls, opts) as ch:
            await asyncio.wait_for(ch.channel_ready(), self.connect_deadline_s)
            stub = plan_pb2_grpc.PlanServiceStub(ch)
            out: asyncio.Queue[Any] = asyncio.Queue()

            async def requests():  # type: ignore[no-untyped-def]
                while True:
                    msg = await out.get()
                    if msg is None:
                        return
                    yield msg

            await out.put(plan_pb2.PlanRequest(center=self.center, node=self.node,
                                               known_version=self.cache.version))
            # no deadline on the stream itself: it is meant to live; keepalive finds a dead peer
            call = stub.WatchPlan(requests())
            stop_task = asyncio.ensure_future(self._stop.wait())
            try:
                self.endpoint = ep
                self.connected = True
                self.cache.set_live(True)
                self.backoff.reset()
                it = call.__aiter__()
                while True:
                    nxt = asyncio.ensure_future(it.__anext__())
                    done, _ = await asyncio.wait({nxt, stop_task}, return_when=asyncio.FIRST_COMPLETED)
                    if stop_task in done:
                        nxt.cancel()
                        call.cancel()
                        return
                    try:
                        push = nxt.result()
                    except StopAsyncIteration:
                        return
                    self.pushes += 1
                    try:
                        plan = plan_from_pb(push.plan)
                        # a plan we already serve (a replica resending it): ACK, nothing to do
                        why = "" if plan.version == self.cache.version else \
                            await self.cache.offer_async(plan)
                    except InvalidInput as e:
                        why = f"plan: {e}"[:MAX_REASON]
                    except Exception as e:  # noqa: BLE001 - a plan we cannot apply is a NACK, never a crash
                        log.exception("applying plan v%s failed", push.version)
                        why = f"internal: {_short(e)}"[:MAX_REASON]
                    if why:
                        self.nacks += 1
                        log.warning("NACK plan v%s: %s", push.version, why)
                    else:  # the newest plan the control plane has is the one we serve
                        self.cache.confirmed_at = self.cache.clock()
                    await out.put(plan_pb2.PlanRequest(
                        center=self.center, node=self.node, known_version=self.cache.version,
                        response_to_version=push.version, response_nonce=push.nonce, ack=not why,
                        error_detail=why))
            finally:
                self.cache.set_live(False)
                stop_task.cancel()
                await out.put(None)
                call.cancel()


def _short(e: BaseException) -> str:
    details = getattr(e, "details", None)
    if callable(details):
        with contextlib.suppress(Exception):
            return f"{e.code().name}: {details()}"  # type: ignore[attr-defined]
    return f"{type(e).__name__}: {e}"[:300]
