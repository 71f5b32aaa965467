"""The leader's DR readiness watch: the next hours of the forecast day, every center's loss, alerts.

Every `readiness_every_s` the leader plans each center's loss at each half hour of the next
`readiness_hours_ahead` hours (core/readiness.py, on the forecast beside the topology) and sets
`callroute_controlplane_readiness_infeasible_cases{center, at}` to 1 for each infeasible case
(the CallrouteDRNotReady alert), logging them. The planning runs in a worker thread: a national
network's window is tens of plans, and the event loop serves reports meanwhile.

Without a forecast (no `forecast` setting, no <topology>.forecast.yaml) it is off: a flat day is
what the live DR plan already checks. A bad forecast turns it off with an error, never costs the lead.

Must not: change routes or write the store (it only predicts); run when this replica does not lead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import yaml

from controlplane.core.calendar import DEFAULT_CALENDAR, local_clock
from controlplane.core.model import InvalidInput
from controlplane.core.readiness import (
    Case,
    Forecast,
    alerts,
    parse_forecast,
    readiness_matrix,
    slot_of,
    window,
)

log = logging.getLogger("callroute.controlplane.readiness")


def load_forecast(settings: Any, topology: Any) -> Forecast | None:
    """The settings' forecast, or the file beside the topology; None when neither exists.
    Raises InvalidInput (also for a `forecast` setting naming a missing file) or OSError."""
    from controlplane.core.topology import _StrictLoader

    path = (Path(settings.forecast) if settings.forecast
            else Path(settings.topology).with_suffix(".forecast.yaml"))
    if not settings.forecast and not path.exists():
        return None
    data = yaml.load(path.read_text(), Loader=_StrictLoader)  # noqa: S506 - strict safe loader
    return parse_forecast(data, topology, str(path))


class ReadinessWatch:
    def __init__(self, cp: Any, leader: Any) -> None:
        self.cp = cp
        self.leader = leader
        self.forecast: Forecast | None = None
        self.last: list[Case] = []

    def _hour_now(self) -> float:
        # the network's local clock (the calendar's zone, its default without one): never the
        # host's local time, which the planner no longer uses either
        wall = time.time()
        brain = self.leader.brain
        return local_clock((brain.calendar if brain is not None else None) or DEFAULT_CALENDAR, wall)[0]

    def _once(self) -> list[Case]:
        assert self.forecast is not None
        slots = window(slot_of(self._hour_now()), self.cp.settings.readiness_hours_ahead)
        return readiness_matrix(self.cp.topology, self.forecast, slots=slots)

    async def run(self) -> None:
        s = self.cp.settings
        gauge = self.cp.metrics.readiness_infeasible
        try:
            forecast = load_forecast(s, self.cp.topology)
        except (InvalidInput, OSError, yaml.YAMLError) as e:
            # a prediction is not worth a leader: say so loudly and keep leading without it
            log.error("DR readiness off: %s", e)
            return
        if forecast is None:
            # no forecast day, nothing to foresee: today's flat calls_per_hour is what the live DR
            # plan already checks, and tens of plans per window would be spent for no news
            log.info("DR readiness off: no forecast (set `forecast` or put <topology>.forecast.yaml "
                     "beside the topology)")
            return
        self.forecast = forecast
        try:
            while self.leader.brain is not None:
                cases = await asyncio.to_thread(self._once)
                bad = alerts(cases)
                gauge.clear()
                for c in bad:
                    gauge.labels(c.center, c.at).set(1)
                if bad:
                    log.warning("DR readiness: %d infeasible cases ahead; worst: losing %s at %s leaves "
                                "%s at %.2f", len(bad), bad[0].center, bad[0].at, bad[0].worst_receiver,
                                bad[0].worst_service_level)
                self.last = cases
                await asyncio.sleep(s.readiness_every_s)
        finally:
            gauge.clear()  # a replica that does not lead predicts nothing
