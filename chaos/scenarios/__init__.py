"""Chaos scenarios as code: each a bounded run of a real network with one fault and its pass criteria.

`SCENARIOS` maps a name (a row of the reliability table, or a 2020 incident) to its `Scenario`; `CI`
lists the subset the test suite runs in small form. Importing this package starts nothing.
"""

from __future__ import annotations

from chaos.scenarios.common import RunOptions, Scenario
from chaos.scenarios.failover import f1, f3, f14, l4
from chaos.scenarios.partition import f8, f10, f11
from chaos.scenarios.receivers import f17, overflow_path_broken, wuhan_2020
from chaos.scenarios.silent import f14_silent_blackhole, f14_silent_stop, f20_panic
from chaos.scenarios.store import f4, f5, l5

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("F1", "leader paused past its lease, then resumed: fenced, demotes at once", f1, 120, 60),
    Scenario("F3", "leader SIGKILL under lookup load: standby leads within TTL + 1 s", f3, 120, 60),
    Scenario("F4", "one etcd member killed under write load: no acked write lost", f4, 120, 60),
    Scenario("F5", "etcd quorum lost: last good plan served, alert, recovery within 10 s", f5, 120, 60),
    # 10 cuts of 9 s each, with the heal and home checks between them: about 13 s a cut
    Scenario("F8", "agent <-> control plane partition: last good plan, stale, no flapping", f8, 300, 60),
    Scenario("F10", "500 ms +- 200 ms on the etcd path: lookup p99 unchanged", f10, 120, 60),
    Scenario("F11", "half-open and slow report streams: dead peer detected by keepalive", f11, 120, 60),
    Scenario("F14", "whole center lost: DR at every agent within 2 s p99 (>= 20 trials)", f14, 900, 120),
    Scenario("F14-silent-stop", "center's agent frozen (SIGSTOP): DR at every other agent within 2 s p99",
             f14_silent_stop, 900, 120),
    Scenario("F14-silent-blackhole", "center's whole link black-holed: DR at every other agent in 2 s p99",
             f14_silent_blackhole, 900, 120),
    Scenario("F20-panic", "5 of 9 centers cut from the control plane at once: plan frozen, no DR, alert",
             f20_panic, 180, 150),
    Scenario("F17", "a receiver accepts routes but does not answer: out within 3 intervals", f17, 120, 60),
    Scenario("L4", "every agent reconnects at once after a control-plane restart", l4, 120, 60),
    Scenario("L5", "short soak: a plan change a second, bounded etcd and memory", l5, 240, 90),
    Scenario("wuhan-2020", "Wuhan closes during a 21% surge: 8 receivers by spare capacity", wuhan_2020, 180),
    Scenario("overflow-path-broken", "Wuhan's receiver stops answering / its calls never arrive",
             overflow_path_broken, 300),
)}

# the CI-sized subset (tests/test_chaos_ci.py), in the order they run
CI = ("F3", "F8", "F14", "F14-silent-stop", "F17")

__all__ = ["CI", "SCENARIOS", "RunOptions", "Scenario"]
