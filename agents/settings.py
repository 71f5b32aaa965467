"""The center agent's settings: one frozen struct, loaded once at start and validated.

Sources, later ones winning: defaults here, a YAML/JSON `--config` file, command-line flags.
Every default says why it is that number. This module must not start anything or keep state.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgspec

from agents.acd import ACD_ADAPTERS
from controlplane.core.model import MAX_SKILLS_PER_REPORT, InvalidInput, check_id
from wire.settings import convert_settings, parse_hostport, read_settings_data, where

# An address list longer than this is a typo (a pasted file), not a control-plane cluster.
MAX_ENDPOINTS = 16
# a national network has 8 to 40 centers; 1024 bounds a typo'd or hostile config file
MAX_PEERS = 1024


class AgentSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # the center this agent speaks for; must be a center of the topology when one is given
    center: str
    # control-plane endpoints "host:port"; the reporter and plan watcher walk them in order
    controlplane: tuple[str, ...] = ()
    # a control-plane address as the control plane names it (a follower's "leader at H:P") -> the
    # address this center dials to reach it: a NAT, a local forwarder, the chaos proxies. Without an
    # entry the redirect is followed as named. (A redirect around the center's own path to the
    # control plane had made every chaos cut after the first miss the agent: F8.)
    controlplane_via: dict[str, str] = {}
    # switch-facing HTTP/1.1 lookup listener (also /healthz and /metrics); nothing on it changes
    # routing, so switches need no credential
    http: str = "127.0.0.1:8080"
    # the ACD listener: POST /v1/acd (push ACD) and /v1/admin/acd (simulated ACD's fault switches).
    # Loopback, any free port by default: several agents share a host (callroute up, tests) and the
    # bound port is printed; a deployment with a push ACD sets it. Off loopback it needs
    # acd_tls_cert/acd_tls_key and acd_token_file, or `insecure`.
    acd_listen: str = "127.0.0.1:0"
    acd_tls_cert: str = ""
    acd_tls_key: str = ""
    # file holding the bearer token the ACD must send (Authorization: Bearer ...)
    acd_token_file: str = ""
    # allow a non-loopback ACD listener without TLS and token (logged, and exported as
    # callroute_agent_insecure{listener="acd"} 1)
    insecure: bool = False
    # hostile-client limits of both HTTP listeners (agents.httpserver.HttpLimits says why each)
    http_header_timeout_s: float = 10.0
    http_body_timeout_s: float = 10.0
    http_idle_timeout_s: float = 60.0
    http_write_timeout_s: float = 10.0
    http_max_connections: int = 1024
    http_max_header_bytes: int = 16 << 10
    http_max_pipeline: int = 64
    # push ACD without a topology: distinct skill names it may make the agent hold (with a
    # topology only its skills are accepted); a report carries at most this many anyway
    push_max_skills: int = 256
    # gRPC Route/RouteBatch listener; empty = no gRPC lookups
    grpc: str = ""
    # "simulated" for drills and development, "push" when a real ACD feeds us
    acd: str = "simulated"
    # last good plan and the report sequence high-water mark live here; empty = nothing survives
    state_dir: str = ""
    # the network topology: the plan checks use it and the simulated ACD takes its staffing from it
    topology: str = ""
    # node name sent to the control plane (several agents may serve one center)
    node: str = ""
    # the control plane counts stale (3 missed) and down intervals in these; a lost center must be
    # rerouted within 2 s, so reports come every half second
    report_interval_s: float = 0.5
    # HTTP/2 keepalive pings: a half-open control-plane link is noticed within 10 + 5 s (F11)
    keepalive_time_s: float = 10.0
    keepalive_timeout_s: float = 5.0
    # deadline for unary RPCs and for opening a stream; every network call has one
    rpc_deadline_s: float = 5.0
    # a stream that must not hang forever is re-opened after this long even when healthy; long
    # enough that reconnect cost is negligible, short enough to rebalance after a leader change
    stream_max_age_s: float = 600.0
    # reconnect backoff: first retry quickly (a leader moved), cap so that a control plane that
    # returns is found within a few seconds; jitter spreads a herd of agents (L4)
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 3.0
    # report sequence numbers are reserved in blocks: one fsync per block keeps the hot path free
    # of I/O; 10,000 reports = 83 minutes at 2 Hz
    seq_block: int = 10_000
    # after SIGTERM: health says NOT_SERVING for this long before listeners close, so that
    # switches and load balancers polling health stop sending (F15)
    drain_notice_s: float = 0.5
    # then in-flight lookups get at most this long to finish before connections are cut
    drain_grace_s: float = 2.0
    # one lookup in this many is timed for the latency histogram: timing every one costs ~5%
    latency_sample_every: int = 32
    # simulated ACD: a factor of 60 runs a day in 24 minutes; seed makes runs repeatable
    sim_time_scale: float = 1.0
    sim_seed: int = 1
    # simulated local hour at start (shifts follow the simulated clock)
    sim_start_hour: float = 10.0
    # share of the center's own hosted branch traffic that arrives without a lookup by this agent
    sim_own_traffic: float = 1.0
    # mean caller patience before abandoning (seconds of simulated time)
    sim_patience_s: float = 90.0
    # simulation only: center -> ACD listener HOST:PORT of its agent, so calls this agent routes to
    # another center reach that center's simulated ACD (callroute up and the chaos harness fill it)
    sim_peers: dict[str, str] = {}
    # center -> HOST:PORT of that center's agent's ACD listener (agent-to-agent, with the ACD
    # token): where this agent sends the indirect probes the control plane asks for when a center
    # goes silent, and its DR path probes (issue 16). Empty: this agent probes nothing and the
    # control plane waits out down_after_s for silent centers, as before. The same map can serve
    # every agent of the network: an agent's own center in it is ignored
    peers: dict[str, str] = {}
    # a peer's answer on a LAN/WAN takes tens of ms; 0.3 s is ten times that and keeps the probe
    # round (request on an ack, probe, early report) inside the 2 s budget of F18
    probe_timeout_s: float = 0.3
    # F21: each peer's call entry is probed about this often (+-20% jitter); a break is found within
    # about interval + 2 probe timeouts (a failure and its retry), inside the 2 s budget, while the
    # path is idle; 0 turns path probes off
    path_probe_interval_s: float = 1.0
    # simulated ACD fault at start (chaos harness): normal | not_answering | calls_not_arriving;
    # POST /v1/admin/acd {"mode": ...} changes it at run time
    sim_mode: str = "normal"
    # added to the wall clock used for Report.sent_at; test hook for F13 (must change nothing)
    wall_offset_s: float = 0.0
    # lookups per POST /v1/routes or RouteBatch (route.proto says 1000): bounds one request's work
    max_batch: int = 1000
    # mTLS to the control plane (files from `callroute certs init`); all empty = plaintext, as
    # before. The control plane takes this center's identity from tls_cert, so it must be the
    # certificate issued for `center`. Files are re-read at every reconnect (rotation, B7).
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    # expected name in the control plane's certificate when not the endpoint's host
    tls_server_name: str = ""




def validate(s: AgentSettings) -> AgentSettings:
    """Reject settings that cannot work, naming the field and value (B10)."""
    check_id("center", s.center)
    if len(s.controlplane) > MAX_ENDPOINTS:
        raise InvalidInput("controlplane", len(s.controlplane), f"more than {MAX_ENDPOINTS} endpoints")
    for ep in s.controlplane:
        parse_hostport("controlplane", ep)
    if len(s.controlplane_via) > MAX_ENDPOINTS:
        raise InvalidInput("controlplane_via", len(s.controlplane_via), f"more than {MAX_ENDPOINTS} entries")
    for named, dial in s.controlplane_via.items():
        parse_hostport("controlplane_via", named)
        parse_hostport(f"controlplane_via.{named}", dial)
    parse_hostport("http", s.http)
    parse_hostport("acd_listen", s.acd_listen)
    if bool(s.acd_tls_cert) != bool(s.acd_tls_key):
        field = "acd_tls_key" if s.acd_tls_cert else "acd_tls_cert"
        raise InvalidInput(field, getattr(s, field), "acd_tls_cert and acd_tls_key go together")
    if s.grpc:
        parse_hostport("grpc", s.grpc)
    if len(s.peers) > MAX_PEERS:
        raise InvalidInput("peers", len(s.peers), f"more than {MAX_PEERS} peers")
    for peer, addr in s.peers.items():
        check_id("peers", peer)
        parse_hostport(f"peers.{peer}", addr)
    if s.sim_mode not in ("normal", "not_answering", "calls_not_arriving"):
        raise InvalidInput("sim_mode", s.sim_mode, "must be normal, not_answering or calls_not_arriving")
    if s.acd not in ACD_ADAPTERS:
        raise InvalidInput("acd", s.acd, f"must be one of {', '.join(sorted(ACD_ADAPTERS))}")
    positive = {"report_interval_s": (0.01, 3600), "keepalive_time_s": (0.1, 3600),
                "keepalive_timeout_s": (0.1, 600), "rpc_deadline_s": (0.01, 600),
                "stream_max_age_s": (1, 86400), "backoff_initial_s": (0.001, 60),
                "backoff_max_s": (0.001, 600), "drain_notice_s": (0, 600), "drain_grace_s": (0, 600),
                "sim_time_scale": (0.001, 100_000), "sim_patience_s": (0.1, 86400),
                "sim_own_traffic": (0, 1000), "sim_start_hour": (0, 24),
                "http_header_timeout_s": (0.01, 3600), "http_body_timeout_s": (0.01, 3600),
                "http_idle_timeout_s": (0.01, 86400), "http_write_timeout_s": (0.01, 3600),
                "probe_timeout_s": (0.01, 60), "path_probe_interval_s": (0, 3600)}
    for name, (lo, hi) in positive.items():
        v = getattr(s, name)
        if not isinstance(v, int | float) or not math.isfinite(v) or not lo <= v <= hi:
            raise InvalidInput(name, v, f"must be a number in [{lo}, {hi}]")
    if 0 < s.path_probe_interval_s < 0.1:
        raise InvalidInput("path_probe_interval_s", s.path_probe_interval_s,
                           "must be 0 (off) or at least 0.1 s: faster is a probe flood, not a check")
    if not math.isfinite(s.wall_offset_s):
        raise InvalidInput("wall_offset_s", s.wall_offset_s, "must be finite")
    for name, lo, hi in (("seq_block", 1, 10_000_000), ("latency_sample_every", 1, 1_000_000),
                         ("max_batch", 1, 1_000_000), ("http_max_connections", 1, 1_000_000),
                         ("http_max_header_bytes", 1024, 1 << 20), ("http_max_pipeline", 1, 100_000),
                         ("push_max_skills", 1, MAX_SKILLS_PER_REPORT)):
        v = getattr(s, name)
        if not isinstance(v, int) or not lo <= v <= hi:
            raise InvalidInput(name, v, f"must be an integer in [{lo}, {hi}]")
    if bool(s.tls_cert) != bool(s.tls_key):
        field = "tls_key" if s.tls_cert else "tls_cert"
        raise InvalidInput(field, getattr(s, field), "tls_cert and tls_key go together")
    return s


def load_settings(config: str | Path | None = None, **overrides: Any) -> AgentSettings:
    """Defaults, then the config file, then non-None overrides (command-line flags)."""
    data = read_settings_data(config, overrides)
    if isinstance(data.get("controlplane"), str):
        data["controlplane"] = [x.strip() for x in data["controlplane"].split(",") if x.strip()]
    s = convert_settings(data, AgentSettings, config)
    try:
        return validate(s)
    except InvalidInput as e:
        raise InvalidInput(e.field, e.value, e.why + where(config)) from None
