"""Every replica's view of the published plans, and the WatchPlan service built on it.

`PlanFeed` follows the store (list, then watch with resume) and holds the latest complete plan;
`PlanServicer` pushes it to agents xDS-style: the latest plan on subscribe, then every newer one,
coalesced (a slow agent gets only the latest, never a queue of stale plans); ACK/NACK per center
and version go to the store (`acks/<center>`) and to metrics. Must not: write plans, hold more than
one plan per stream, or let one slow agent delay another.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from typing import Any

import grpc
import msgspec

from callroute.v1 import plan_pb2, plan_pb2_grpc, types_pb2
from controlplane.core.model import InvalidInput, Plan, check_id

log = logging.getLogger("callroute.controlplane.planwatch")

# NACK reasons from agents go to the store and to operators' screens: keep them readable and small
MAX_NACK_DETAIL = 2000


class AckRecord(msgspec.Struct, frozen=True):
    """What one center's agent last said about a plan (stored at acks/<center>)."""

    center: str
    version: int
    ack: bool
    error: str = ""
    node: str = ""
    at: float = 0.0  # wall time, informative
    served_by: str = ""
    # the latest version this center refused, kept across later ACKs so operators still see it
    nacked_version: int = 0
    nack_error: str = ""


class PlanFeed:
    """The latest complete plan this replica has seen, and a way to wait for a newer one."""

    def __init__(self) -> None:
        self.pb: types_pb2.Plan | None = None
        self.latest: Plan | None = None
        self.version = 0
        self._compiled: Any = None
        self._newer: asyncio.Future[None] | None = None
        # monotonic time of the last new plan or leader heartbeat seen (plan age counts from it)
        self.confirmed_at: float | None = None

    def _future(self) -> asyncio.Future[None]:
        if self._newer is None or self._newer.done():
            self._newer = asyncio.get_running_loop().create_future()
        return self._newer

    def update(self, pb: types_pb2.Plan, plan: Plan, now: float) -> bool:
        """Take `plan` if newer; wake every waiter. Returns whether it was taken."""
        self.confirmed_at = now
        if plan.version <= self.version:
            return False
        self.pb, self.latest, self.version, self._compiled = pb, plan, plan.version, None
        if self._newer is not None and not self._newer.done():
            self._newer.set_result(None)
        return True

    def beat(self, now: float) -> None:
        self.confirmed_at = now

    def age(self, now: float) -> float:
        return float("inf") if self.confirmed_at is None else now - self.confirmed_at

    async def wait_newer(self, version: int) -> None:
        """Return once the feed holds a plan newer than `version`."""
        while self.version <= version:
            await asyncio.shield(self._future())

    def compiled(self) -> Any:
        """The latest plan compiled for lookups (compiled on first use: pushes do not wait for it)."""
        if self._compiled is None and self.latest is not None:
            from controlplane.core.lookup import CompiledPlan

            self._compiled = CompiledPlan.compile(self.latest)
        return self._compiled


def decode_plan(data: bytes) -> tuple[types_pb2.Plan, Plan]:
    """Stored plan bytes -> (message, model plan); InvalidInput for anything malformed."""
    from wire.convert import parse_plan_bytes

    plan = parse_plan_bytes(data)
    pb = types_pb2.Plan()
    pb.ParseFromString(data)
    return pb, plan


class PlanServicer(plan_pb2_grpc.PlanServiceServicer):
    def __init__(self, cp: Any) -> None:
        self.cp = cp
        self._stream_ids = itertools.count(1)
        # stream id -> version its agent last ACKed (for the agents_acked gauge)
        self._acked: dict[int, int] = {}

    def _update_ack_gauge(self) -> None:
        counts: dict[int, int] = {}
        for v in self._acked.values():
            counts[v] = counts.get(v, 0) + 1
        self.cp.metrics.set_acked(counts)

    async def WatchPlan(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        cp = self.cp
        feed: PlanFeed = cp.feed
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        try:
            check_id("center", first.center)
            if first.center not in cp.known_centers:
                raise InvalidInput("center", first.center, "unknown center")
            if first.response_nonce:
                raise InvalidInput(
                    "response_nonce",
                    first.response_nonce,
                    "the first message must be a subscription (no nonce)",
                )
        except InvalidInput as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        center, node = first.center, first.node[:64]
        sid = next(self._stream_ids)
        # what was last pushed on this stream: a plan the agent already has is not pushed again
        state = {"pushed": first.known_version, "nonce": ""}
        cp.metrics.watch_streams.inc()

        async def read_answers() -> None:
            async for msg in request_iterator:
                if msg.center != center:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"center={msg.center!r}: must not change within a stream ({center!r})",
                    )
                if not msg.response_nonce or msg.response_nonce != state["nonce"]:
                    continue  # stale answer to an older push, or a repeated subscription
                version = msg.response_to_version
                if msg.ack:
                    self._acked[sid] = version
                    self._update_ack_gauge()
                    cp.acks.record(center, node, version, True, "")
                else:
                    cp.metrics.nacks.labels(center).inc()
                    cp.acks.record(center, node, version, False, msg.error_detail[:MAX_NACK_DETAIL])
                    log.warning(
                        "center %s node %s NACKed plan %d: %s", center, node, version, msg.error_detail[:200]
                    )

        reader = asyncio.ensure_future(read_answers())
        nonces = itertools.count(1)
        try:
            while True:
                waiter = asyncio.ensure_future(feed.wait_newer(state["pushed"]))
                done, _ = await asyncio.wait({waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if reader in done:
                    waiter.cancel()
                    reader.result()  # re-raise an abort
                    return
                pb, version = feed.pb, feed.version
                nonce = f"{sid}-{next(nonces)}"
                state["nonce"], state["pushed"] = nonce, version
                await context.write(
                    plan_pb2.PlanPush(version=version, nonce=nonce, plan=pb, served_by=cp.settings.id)
                )
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            self._acked.pop(sid, None)
            self._update_ack_gauge()
            cp.metrics.watch_streams.dec()


class AckRecorder:
    """Writes each center's latest ACK/NACK to acks/<center>, coalesced, off the push path."""

    def __init__(self, cp: Any) -> None:
        self.cp = cp
        self.latest: dict[str, AckRecord] = {}
        self._pending: dict[str, AckRecord] = {}
        self._kick = asyncio.Event()

    def record(self, center: str, node: str, version: int, ack: bool, error: str) -> None:
        prev = self.latest.get(center)
        nv, ne = (prev.nacked_version, prev.nack_error) if prev else (0, "")
        if not ack:
            nv, ne = version, error
        rec = AckRecord(center, version, ack, error, node, time.time(), self.cp.settings.id, nv, ne)
        self.latest[center] = rec
        self._pending[center] = rec
        self._kick.set()

    async def run(self) -> None:
        cp = self.cp
        while True:
            await self._kick.wait()
            self._kick.clear()
            batch, self._pending = self._pending, {}
            for center, rec in batch.items():
                try:
                    await cp.store_put(cp.key("acks/" + center), msgspec.json.encode(rec))
                except Exception as e:  # the agent is fine; only the record is late: retry
                    cp.metrics.store_errors.labels("ack").inc()
                    log.warning("recording ack of %s failed: %s", center, e)
                    self._pending.setdefault(center, rec)
            if self._pending:
                await asyncio.sleep(cp.settings.watch_retry_s)
                self._kick.set()
