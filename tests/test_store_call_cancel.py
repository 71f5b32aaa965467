"""ControlPlane._call, every store call of the control plane, never drops its caller's cancellation.

Python 3.11's asyncio.wait_for returned the call's result when the caller was cancelled as the call
completed. A replica stopped while it took over leadership (a store read in LeaderLoop._lead) then
swallowed the stop, went on to lead, and its tasks outlived stop() (tests/test_topology_service.py
hung in the event loop's teardown). No sleep waits for state here: the one yield lets the task reach
its await."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from controlplane.service.server import ControlPlane


async def test_a_store_call_completing_as_its_caller_is_cancelled_still_cancels_the_caller():
    cp = SimpleNamespace(settings=SimpleNamespace(store_deadline_s=5.0), metrics=None)
    call: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    caller = asyncio.create_task(ControlPlane._call(cp, "get", call))  # type: ignore[arg-type]
    await asyncio.sleep(0)  # one scheduling step: the caller now awaits the store call
    assert not caller.done()
    call.set_result("value")  # the store answers ...
    caller.cancel()  # ... in the same step as the replica stops
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert caller.cancelled()


async def test_a_store_call_past_its_deadline_is_a_timeout():
    cp = SimpleNamespace(settings=SimpleNamespace(store_deadline_s=0.01),
                         metrics=SimpleNamespace(store_errors=SimpleNamespace(
                             labels=lambda op: SimpleNamespace(inc=lambda: None))))
    never: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError):
        await ControlPlane._call(cp, "get", never)  # type: ignore[arg-type]
