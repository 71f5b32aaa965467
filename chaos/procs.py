"""The chaos harness's processes: a control-plane replica or a center agent as a real child
process on loopback (start, SIGTERM/SIGKILL, SIGSTOP/SIGCONT, its log, its /metrics), and the
harness's timing constants and log line. chaos/harness.py's Cluster runs them.

Must not: listen beyond 127.0.0.1, or leave a child process behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from devtools.etcd import free_port

ROOT = Path(__file__).resolve().parent.parent
# A process imports grpc, protobuf and the core, and an agent compiles its first plan: seconds on a
# loaded 2-core machine, never a minute.
START_TIMEOUT_S = 60.0
# SIGTERM gets this long (an agent drains for drain_notice_s + drain_grace_s) before SIGKILL.
STOP_TIMEOUT_S = 5.0
# A switch waits this long for an agent before trying the peer: calls ring for seconds, so half a
# second is invisible to a caller and long enough for a loaded agent's p99.
LOOKUP_TIMEOUT_S = 0.5
# The entry agent, then up to two peers: a third failure means the site's whole lookup tier is gone.
MAX_TRIES = 3
# Total lookups per second the generator may be asked for: the machine has 2 shared cores and the
# agents under test need most of them.
MAX_RATE_PER_S = 500.0
# Lookups in flight at once: at the maximum rate with every agent stalled for LOOKUP_TIMEOUT_S.
MAX_IN_FLIGHT = 256
# Recorded lookups per run: 30 minutes at 500/s; beyond that the run is not a bounded scenario.
MAX_RECORDS = 1_000_000
# /metrics and /healthz probes: a paused process must not stall the harness.
PROBE_TIMEOUT_S = 0.5
# Control-plane settings for chaos runs: production defaults except where noted.
DEFAULT_CP_CONFIG: dict[str, Any] = {
    # compaction is exercised by its own scenario; a run is minutes long
    "compact_after_s": 600.0,
}


def log(msg: str) -> None:
    """Progress on stderr: a run takes minutes and must show what it is doing."""
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


class Proc:
    """One child process in its own session (a Ctrl-C aimed at the harness does not hit it first)."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.started_at = 0.0

    def start(self) -> None:
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=logf,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self.paused = False
        self.started_at = time.monotonic()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def send(self, sig: signal.Signals) -> None:
        if self.alive:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL (a crash: no drain, no goodbye), then reap."""
        if self.proc is None:
            return
        self.send(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self.paused = False

    def pause(self) -> None:
        self.send(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.send(signal.SIGCONT)
        self.paused = False

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (graceful: an agent drains), SIGKILL if it does not exit in time."""
        if self.proc is None:
            return
        if self.paused:
            self.resume()
        self.send(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def http_get_sync(port: int, path: str, timeout_s: float = PROBE_TIMEOUT_S) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[k] = float(v)
    return out


class Replica(Proc):
    """A control-plane replica; its ports come from its --port-file."""

    def __init__(self, tmp: Path, name: str, topology: str, store: str, config: dict[str, Any]) -> None:
        cfg = tmp / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump(config))
        self.port_file = tmp / f"{name}.ports"
        self.grpc_port = free_port()
        self.metrics_port = free_port()
        # a harness: operators named in requests, no tokens (issue 15 item 3, opted into)
        super().__init__(name, [sys.executable, "-m", "controlplane.cli", "controlplane",
                                "--operator-from-request", "--topology", topology, "--store", store,
                                "--listen", f"127.0.0.1:{self.grpc_port}",
                                "--metrics", f"127.0.0.1:{self.metrics_port}", "--id", name,
                                "--config", str(cfg), "--port-file", str(self.port_file)],
                         tmp / f"{name}.log")

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.port_file.unlink()
        super().start()

    def ready(self) -> bool:
        return self.port_file.exists()

    def metrics(self) -> dict[str, float]:
        """This replica's /metrics; {} when it does not answer (dead, paused, starting)."""
        if not self.alive or self.paused:
            return {}
        try:
            return parse_metrics(http_get_sync(self.metrics_port, "/metrics")[1].decode())
        except (OSError, ValueError):
            return {}


class AgentProc(Proc):
    """A center's agent. Its HTTP port is fixed at construction so a restart keeps the address."""

    def __init__(self, tmp: Path, center: str, topology: str, controlplane: Sequence[str],
                 config: dict[str, Any]) -> None:
        self.center = center
        self.http_port = free_port()
        # the ACD listener (fault switches, peers' simulated calls): fixed too, for the same reason
        self.acd_port = free_port()
        self.state_dir = tmp / f"agent-{center}"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = tmp / f"agent-{center}.json"
        self.config_path.write_text(json.dumps(config))
        super().__init__(f"agent-{center}", [
            sys.executable, "-m", "controlplane.cli", "agent", "--center", center,
            "--controlplane", ",".join(controlplane), "--http", f"127.0.0.1:{self.http_port}",
            "--acd-listen", f"127.0.0.1:{self.acd_port}",
            "--acd", "simulated", "--state-dir", str(self.state_dir), "--topology", topology,
            "--config", str(self.config_path)], tmp / f"agent-{center}.log")

    def health(self) -> dict[str, Any] | None:
        if not self.alive or self.paused:
            return None
        try:
            st, body = http_get_sync(self.http_port, "/healthz")
            h: dict[str, Any] = json.loads(body)
            h["http_status"] = st
            return h
        except (OSError, ValueError):
            return None
