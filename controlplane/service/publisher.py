"""Writes plans to the store, fenced on the leader key: complete or absent, never torn.

Layout under the prefix: `plans/<version:020d>/...` holds a plan's chunks with the manifest
written last, and `plans/latest` (the version pointer) is written in the same fenced transaction as
the manifest, so a reader that follows `plans/latest` always finds a complete plan (F16). Only the
last `history_keep` plans are kept. `plans/heartbeat` is the leader's fenced "still here, still
version N" that keeps every replica's plan age low while nothing changes.

The failpoint `CALLROUTE_FAILPOINT=publish:chunk:N` (or `publish:manifest:0`) kills the process
(os._exit) just before that write of a plan: the crash-in-the-middle of F16.

Must not: write anything without the fence, or reuse a version number.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import msgspec

from controlplane.core.model import Plan
from wire.convert import plan_to_pb

log = logging.getLogger("callroute.controlplane.publisher")

FAILPOINT_ENV = "CALLROUTE_FAILPOINT"
# exit status of a failpoint crash: distinct from errors so tests know the crash was the failpoint
FAILPOINT_EXIT = 97


class Heartbeat(msgspec.Struct, frozen=True):
    version: int
    leader: str
    at: float  # wall time, informative


def parse_failpoint(value: str) -> tuple[str, int] | None:
    """`publish:<step>:<index>` -> (step, index): crash before the write put_chunked is about to
    make at that step ("chunk" with the batch's first chunk index, or "manifest" with 0)."""
    parts = value.split(":")
    if (
        len(parts) != 3
        or parts[0] != "publish"
        or parts[1] not in ("chunk", "manifest")
        or not parts[2].isdigit()
    ):
        return None
    return parts[1], int(parts[2])


class Publisher:
    def __init__(self, cp: Any) -> None:
        self.cp = cp
        fp = os.environ.get(FAILPOINT_ENV, "")
        self.failpoint = parse_failpoint(fp) if fp else None
        if fp and self.failpoint is None:
            log.error("ignoring %s=%r: expected publish:chunk|manifest:N", FAILPOINT_ENV, fp)

    def _failpoint(self, step: str, index: int) -> None:
        if self.failpoint is not None and (step, index) == self.failpoint and self.cp.feed.version > 0:
            # crash for real (no cleanup, no finally): what a kill -9 mid-publish leaves behind.
            # Only after the first plan is in the store, so there is an old plan to keep
            log.error("failpoint %s:%d: exiting mid-publish", step, index)
            os._exit(FAILPOINT_EXIT)

    async def publish(self, election: Any, plan: Plan) -> None:
        cp = self.cp
        data = plan_to_pb(plan).SerializeToString()
        await cp.put_plan(election, plan.version, data, self._failpoint)
        try:  # the lasting history (service/planstore.py); a miss is archived from plans/ later
            await cp.planstore.archive(election, plan)
        except Exception as e:
            cp.metrics.store_errors.labels("history").inc()
            log.warning("archiving plan %d failed (retried with the next plan): %r", plan.version, e)
        keep = cp.settings.history_keep
        if plan.version > keep:
            old = plan.version - keep
            try:
                await cp.delete_plan(election, old)
            except Exception as e:  # history trimming is housekeeping: fence loss is seen by the next write
                log.warning("trimming plan %d failed: %s", old, e)

    async def heartbeat(self, election: Any, version: int) -> int:
        cp = self.cp
        hb = Heartbeat(version, cp.settings.id, time.time())
        return int(await cp.fenced_put(election, "plans/heartbeat", msgspec.json.encode(hb)))

    async def latest_version(self) -> int:
        return int(await self.cp.read_latest_version())

    async def load(self, version: int) -> Plan | None:
        got = await self.cp.read_plan(version)
        return None if got is None else got[1]
