"""The control-plane replica's settings: one frozen struct, loaded once at start and validated.

Sources, later ones winning: the defaults here, a YAML/JSON `--config` file, command-line flags.
Every default says why it is that number. This module must not start anything or keep state.
"""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from typing import Any

import msgspec

from controlplane.core.demand import DemandSettings
from controlplane.core.health import HealthSettings
from controlplane.core.model import InvalidInput, check_id
from controlplane.core.retention import RetentionSettings, validate_retention
from controlplane.core.suspicion import SuspicionSettings
from wire.settings import convert_settings, is_loopback, parse_hostport, read_settings_data, where


class ControlPlaneSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # the network topology YAML: the one source of centers, branches and policy
    topology: str
    # "etcd://H:P[,H:P]" for production, "embedded:PATH" for one machine (controlplane.store),
    # "embedded" for memory only (tests; a warning says acknowledged changes die with the process).
    # Empty = "embedded:<data_dir>/store.log": an acknowledged command must survive a restart, so the
    # one-machine default persists (and the path is printed at start), as etcd's ./default.etcd does
    store: str = ""
    # where the default embedded store lives, relative to the working directory unless absolute
    data_dir: str = "callroute-data"
    # gRPC listener for agents, switches and operators
    listen: str = "127.0.0.1:7400"
    # Prometheus /metrics listener; empty = none
    metrics: str = ""
    # this replica's name in the leader key and in pushes; empty = "<hostname>-<pid>" at load time
    id: str = ""
    # address other replicas tell agents to use ("not leader; leader at ..."); empty = listen
    advertise: str = ""
    # the key prefix in the store: several networks (or test runs) may share one etcd
    prefix: str = "/callroute/"
    # a load change republishes at most this often: one plan a second is plenty for human-scale
    # queues and keeps etcd history and agent churn small; closes and DOWN publish at once
    publish_interval_s: float = 1.0
    # leader lease: a dead leader is replaced within TTL + 1 s (F3); 2 s rides out a GC pause or
    # a slow etcd fsync without flapping, and keeps takeover inside the 2 s DR budget's order
    lease_ttl_s: float = 2.0
    # what agents are expected to send; the health tracker counts missed intervals of this
    report_interval_s: float = 0.5
    # plans kept in the store for rollback/diff; older ones are deleted (etcd size stays bounded, L5)
    history_keep: int = 50
    # every published plan is also kept content-addressed for this long (service/planstore.py):
    # `callroute explain --at` answers for any call in it. 90 days covers a quarter's complaints
    # and disputes; at a plan a second the store holds a few MB per day (ARCHITECTURE.md)
    plan_retention_s: float = 90 * 86400.0
    # the archive's objects are grouped by epoch so retention deletes whole epochs: a day's
    # unchanged groups are written once more per day, and history goes a day at a time
    plan_epoch_s: float = 86400.0
    # and at most about this many bytes of it: half of etcd's 8 GiB quota. Measured at a plan a
    # second on national.yaml (bench/plan_history.py): a quiet day stores almost nothing, a surge
    # that changes every route every second ~310 MB a day, so 90 days of that would not fit; the
    # oldest plans then go first (segments, and an epoch's objects with its last one), with a warning
    plan_history_max_bytes: int = 4 << 30
    # deadline on every store call: a store slower than this is treated as unavailable (F5), and
    # it is below the lease TTL so a stuck write cannot outlive the leadership it was made under
    store_deadline_s: float = 1.0
    # HTTP/2 keepalive, same as the agents': a half-open peer is noticed within 10 + 5 s (F11)
    keepalive_time_s: float = 10.0
    keepalive_timeout_s: float = 5.0
    # agents ping at keepalive_time_s; refuse anything much faster (ping floods)
    keepalive_min_ping_s: float = 5.0
    # a failed campaign (store unreachable) is retried this often: fast enough for F3's TTL + 1 s,
    # slow enough not to hammer a store that is down
    campaign_retry_s: float = 0.2
    # a plan watch that broke is re-opened after this; the store adapter resumes from the revision
    watch_retry_s: float = 0.2
    # grpc.aio handlers in flight at once; beyond that the server answers RESOURCE_EXHAUSTED
    max_concurrent_rpcs: int = 10_000
    # operator listings (audit, pending) return at most this many entries per page; the CLI follows
    # next_page_token for the rest
    max_list: int = 1000
    # a steady network publishes no new plan, so the leader confirms the current one by a fenced
    # heartbeat key this often; every replica's plan age is the time since it last saw either. 1 s
    # keeps plan age under TTL + 5 s through a takeover (F3) and makes a dead store visible (F5)
    plan_heartbeat_s: float = 1.0
    # plans are stored in chunks of at most this many bytes (etcd's request limit is 1.5 MiB; the
    # store's CHUNK_SIZE of 1 MiB leaves room); tests set it small to publish in several transactions
    plan_chunk_bytes: int = 1 << 20
    # the health tracker's timers; None = the tracker's defaults with interval_s = report_interval_s
    health: HealthSettings | None = None
    # the live demand estimate's windows (controlplane.core.demand); None = its defaults
    demand: DemandSettings | None = None
    # indirect probes of silent centers and the panic threshold (controlplane.core.suspicion,
    # issue 16); None = its defaults
    suspicion: SuspicionSettings | None = None
    # etcd history older than this is compacted by the leader: watchers that were away longer re-list
    # (F7); ten minutes of plans and heartbeats is a few thousand revisions
    compact_after_s: float = 600.0
    # plan-age alert threshold (the _plan_stale gauge goes 1 above it): five missed heartbeats
    plan_stale_after_s: float = 5.0
    # two-person rule for moving live traffic away from a center (close, drain, LIVE drill): off
    # by default so one-machine demos and existing tests keep working; production (helm) turns it on
    require_two_person: bool = False
    # an unapproved request expires after this: 15 min is time to reach a second operator on the
    # bridge, short enough that nobody approves a request out of its context
    approval_ttl_s: float = 900.0
    # how long and how many audit entries, requests, pending approvals and finished drills are kept
    # (controlplane.core.retention, each default with its reason): what clients add stays bounded
    retention: RetentionSettings = RetentionSettings()
    # where the leader writes each drill's report directory (plots + summary), on its own host
    drill_report_dir: str = "./drill-reports"
    # DR readiness (service/readiness.py): the forecast day's YAML (empty = <topology>.forecast.yaml
    # when present, else a flat day); the leader plans every center's loss over the next
    # readiness_hours_ahead hours every readiness_every_s and alerts on an infeasible one. 4 h is a
    # shift's notice to call staff in; every 5 min follows the half-hour grid with room to spare
    forecast: str = ""
    readiness_hours_ahead: float = 4.0
    readiness_every_s: float = 300.0

    # --- security (controlplane.service.auth); every one empty = plaintext and no tokens, as before
    # mTLS on the gRPC listener: server certificate and key (PEM, from `callroute certs init`);
    # re-read when they change, so rotation needs no restart (B7)
    tls_cert: str = ""
    tls_key: str = ""
    # CA that client certificates must chain to; required with tls_cert (agents are identified by
    # their certificate, so a listener without client authentication is not offered)
    tls_ca: str = ""
    # operator tokens (tokens.yaml: sha256 -> name + role); empty = OperatorService open to all
    tokens: str = ""
    # etcd client TLS: CA, client certificate and key, expected server name (empty = endpoint host)
    etcd_ca: str = ""
    etcd_cert: str = ""
    etcd_key: str = ""
    etcd_server_name: str = ""
    # etcd user; its password is read from etcd_password_file (never in config files or argv)
    etcd_user: str = ""
    etcd_password_file: str = ""
    # a listener or store off loopback without TLS and authentication is refused at start; this
    # says the operator means it (a lab network): the replica then logs a warning and exports
    # callroute_controlplane_insecure_mode 1, so it cannot pass for a secured install
    insecure: bool = False
    # issue 15 item 3: who acts is who authenticated (a token, an operator certificate). With
    # neither configured (plaintext, no tokens: `callroute up` gives a dev token instead) changes are
    # refused, since the operator named in a request is nobody's word. This takes that name as
    # given instead, for test harnesses only: anyone can act as anyone and the two-person rule is
    # void; logged as INSECURE at start. Ignored when tokens or TLS are configured
    operator_from_request: bool = False



def insecure_exposures(s: ControlPlaneSettings) -> list[tuple[str, str, str]]:
    """(field, value, what is missing) for every connection off loopback that would run without TLS
    and authentication. Refused unless `insecure`; with it, each is logged and the gauge says so."""
    out = []
    host, _ = parse_hostport("listen", s.listen)
    if not is_loopback(host) and not (s.tls_cert and s.tokens):
        out.append(("listen", s.listen, "needs mTLS (tls_cert, tls_key, tls_ca) and operator tokens"))
    if s.store.startswith("etcd://"):
        hosts = [parse_hostport("store", ep)[0] for ep in s.store[len("etcd://"):].rstrip("/").split(",")]
        if not all(map(is_loopback, hosts)) and not (s.etcd_ca and (s.etcd_cert or s.etcd_user)):
            out.append(("store", s.store, "an etcd off loopback needs etcd_ca and a client "
                        "certificate (etcd_cert, etcd_key) or etcd_user"))
    return out


# (low, high) for every float setting; outside is a typo (ms for s) or cannot work
_RANGES: dict[str, tuple[float, float]] = {
    "publish_interval_s": (0.0, 3600),
    "lease_ttl_s": (0.2, 600),
    "report_interval_s": (0.01, 3600),
    "store_deadline_s": (0.01, 600),
    "keepalive_time_s": (0.1, 3600),
    "keepalive_timeout_s": (0.1, 600),
    "keepalive_min_ping_s": (0.01, 3600),
    "campaign_retry_s": (0.001, 60),
    "watch_retry_s": (0.001, 60),
    "plan_heartbeat_s": (0.05, 3600),
    "compact_after_s": (1.0, 86400 * 7),
    "plan_stale_after_s": (0.1, 86400),
    "approval_ttl_s": (0.1, 86400),
    "readiness_hours_ahead": (0.5, 24),
    "readiness_every_s": (0.05, 86400),
    "plan_retention_s": (60.0, 10 * 366 * 86400),
    "plan_epoch_s": (1.0, 10 * 366 * 86400),
}
_INT_RANGES: dict[str, tuple[int, int]] = {
    "history_keep": (2, 100_000),
    "plan_chunk_bytes": (64, 1 << 20),
    "max_concurrent_rpcs": (1, 1_000_000),
    "max_list": (1, 1_000_000),
    "plan_history_max_bytes": (1 << 16, 1 << 40),
}


def validate(s: ControlPlaneSettings) -> ControlPlaneSettings:
    """Reject settings that cannot work, naming the field and value (B10)."""
    if not s.topology:
        raise InvalidInput("topology", s.topology, "a topology file is required")
    parse_hostport("listen", s.listen)
    if s.metrics:
        parse_hostport("metrics", s.metrics)
    if s.advertise:
        parse_hostport("advertise", s.advertise)
    check_id("id", s.id)
    if not s.prefix.startswith("/") or not s.prefix.endswith("/"):
        raise InvalidInput("prefix", s.prefix, "must start and end with '/'")
    if not (s.store in ("", "embedded") or s.store.startswith("embedded:") or s.store.startswith("etcd://")):
        raise InvalidInput("store", s.store, "must be etcd://HOST:PORT[,HOST:PORT] or embedded[:PATH]")
    for name, (lo, hi) in _RANGES.items():
        v = getattr(s, name)
        if not isinstance(v, int | float) or not math.isfinite(v) or not lo <= v <= hi:
            raise InvalidInput(name, v, f"must be a number in [{lo}, {hi}]")
    for name, (ilo, ihi) in _INT_RANGES.items():
        v = getattr(s, name)
        if not isinstance(v, int) or not ilo <= v <= ihi:
            raise InvalidInput(name, v, f"must be an integer in [{ilo}, {ihi}]")
    _validate_security(s)
    validate_retention(s.retention, s.approval_ttl_s)
    exposed = insecure_exposures(s)
    if exposed and not s.insecure:
        field, value, missing = exposed[0]
        raise InvalidInput(field, value, f"not loopback: {missing}, or --insecure to run without them")
    if s.store_deadline_s >= s.lease_ttl_s:
        # a write that may still land after the lease expired could outlive the fence's meaning
        raise InvalidInput(
            "store_deadline_s", s.store_deadline_s, f"must be below lease_ttl_s ({s.lease_ttl_s})"
        )
    return s


def _validate_security(s: ControlPlaneSettings) -> None:
    tls = (s.tls_cert, s.tls_key, s.tls_ca)
    if any(tls) and not all(tls):
        field = ("tls_cert", "tls_key", "tls_ca")[[bool(x) for x in tls].index(False)]
        raise InvalidInput(field, getattr(s, field), "tls_cert, tls_key and tls_ca go together (mTLS)")
    if bool(s.etcd_cert) != bool(s.etcd_key):
        field = "etcd_key" if s.etcd_cert else "etcd_cert"
        raise InvalidInput(field, getattr(s, field), "etcd_cert and etcd_key go together")
    if bool(s.etcd_user) != bool(s.etcd_password_file):
        field = "etcd_password_file" if s.etcd_user else "etcd_user"
        raise InvalidInput(field, getattr(s, field), "etcd_user and etcd_password_file go together")
    if s.etcd_user:
        check_id("etcd_user", s.etcd_user)
    etcd_only = ("etcd_ca", "etcd_cert", "etcd_key", "etcd_server_name", "etcd_user")
    for name in etcd_only:
        if getattr(s, name) and not s.store.startswith("etcd://"):
            raise InvalidInput(name, getattr(s, name), f"only applies to an etcd:// store, not {s.store!r}")


def store_url(s: ControlPlaneSettings) -> str:
    """The store to open: `store`, or the persisted embedded store under `data_dir` (absolute)."""
    return s.store or "embedded:" + os.path.abspath(os.path.join(s.data_dir, "store.log"))


def load_settings(config: str | Path | None = None, **overrides: Any) -> ControlPlaneSettings:
    """Defaults, then the config file, then non-None overrides (command-line flags)."""
    data = read_settings_data(config, overrides)
    if not data.get("id"):
        # hostname + pid is unique among live replicas; the leader key shows it to operators
        host = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in socket.gethostname())[:40]
        data["id"] = f"{host or 'cp'}-{os.getpid()}"
    s = convert_settings(data, ControlPlaneSettings, config)
    try:
        return validate(s)
    except InvalidInput as e:
        raise InvalidInput(e.field, e.value, e.why + where(config)) from None
