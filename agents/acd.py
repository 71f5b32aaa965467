"""Where a center agent learns its center's load: the ACD adapters behind one interface.

- `ACD`: what the agent needs from an adapter (samples of per-skill load, the calls it routed home,
  what its ACD listener serves, its own metrics);
- `ACD_ADAPTERS`: the adapters an agent can run, by the name its `acd` setting gives:
  agents/simacd.py `SimulatedACD` ("simulated", drills and development) and agents/pushacd.py
  `PushACD` ("push", a real ACD pushing its figures).

A new adapter is a module with a class implementing `ACD` and one line in `ACD_ADAPTERS`; the agent
asks the adapter, never its type. Must not: read a clock or do I/O (adapters take `now`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from agents.pushacd import PushACD
from agents.simacd import SimulatedACD
from controlplane.core.model import AdminState, InvalidInput, SkillLoad, SkillSetAgents, Topology


class ACD(Protocol):
    """What the agent needs from a center's call distributor. An adapter is one class with these, and
    one entry in `ACD_ADAPTERS`; the agent asks the adapter, never its type."""

    state: AdminState
    # what the agent's ACD listener serves for this adapter; None = that path answers 404
    on_push: Callable[[bytes, float], None] | None  # a real ACD's pushed JSON message (and stdin lines)
    on_admin: Callable[[bytes, float], dict[str, Any]] | None  # drill and simulation commands
    # the latest gauges' agents per exact set of skills, each agent counted once (issue 17 item 4;
    # Report.skill_sets); [] when the ACD gives none: the planner uses per-skill logged_in then
    skill_sets: list[SkillSetAgents]

    def sample(self, now: float) -> dict[str, SkillLoad] | None:
        """Per-skill load over the interval since the last sample; None = no fresh data."""
        ...

    def offer_routed(self, per_skill: dict[str, int], now: float) -> None:
        """Calls this agent's lookups sent to its own center since the last call."""
        ...

    def live(self, skill: str, now: float) -> tuple[int, int] | None:
        """The ACD's latest gauges for `skill`: (agents ready, calls queued), for look-ahead offers
        (controlplane/core/lookahead.py); None when it has none fresh (unknown skill, quiet ACD)."""
        ...

    def entry_ok(self) -> bool:
        """Whether the center's call entry takes calls, as far as the adapter can see (issue 16)."""
        ...

    def use_topology(self, topology: Topology) -> None:
        """A plan brought a live topology (issue 18)."""
        ...

    def metric_lines(self) -> list[str]:
        """The adapter's own Prometheus lines for the agent's /metrics."""
        ...


# ---------------------------------------------------------------- the adapters an agent can run


def _simulated(settings: Any, topology: Topology | None, now: float) -> ACD:
    if topology is None:
        raise InvalidInput("topology", "", "the simulated ACD needs --topology for its staffing")
    acd = SimulatedACD(topology, settings.center, now=now, seed=settings.sim_seed,
                       time_scale=settings.sim_time_scale, start_hour=settings.sim_start_hour,
                       own_traffic=settings.sim_own_traffic, patience_s=settings.sim_patience_s)
    acd.set_mode(settings.sim_mode)
    return acd


def _pushed(settings: Any, topology: Topology | None, now: float) -> ACD:
    return PushACD(settings.center, now=now, max_skills=settings.push_max_skills,
                   known_skills=frozenset(topology.skills()) if topology is not None else None)


# the agent setting `acd` names one of these; a new adapter is a class implementing `ACD` and a line
# here (settings validation and the `--acd` flag read the names from this table)
ACD_ADAPTERS: dict[str, Callable[[Any, Topology | None, float], ACD]] = {
    "simulated": _simulated,  # drills and development
    "push": _pushed,  # a real ACD pushes its figures (HTTP POST or stdin lines)
}


def make_acd(settings: Any, topology: Topology | None, now: float) -> ACD:
    """The adapter `settings.acd` names (AgentSettings, validated against ACD_ADAPTERS)."""
    return ACD_ADAPTERS[settings.acd](settings, topology, now)
