"""The Kamailio end-to-end tests' network (test_kamailio_e2e, _requery, _treatments): a real control
plane (embedded store), one real agent per center with a simulated ACD, one Python UAS per center
(tests/sipua.py), the SIP map Kamailio reads, and Kamailio itself (deploy/kamailio/kamailio.cfg).
Everything listens on 127.0.0.1; `Procs` ends every process it started.

`start_network` starts all but Kamailio and returns once every agent serves a plan; each test module
then starts Kamailio its own way (`start_kamailio`) and waits for the plan its steps start from.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_agent_fakes import poll as fakes_poll

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CFG = ROOT / "deploy" / "kamailio" / "kamailio.cfg"
KAMAILIO = shutil.which("kamailio") or ("/usr/sbin/kamailio" if os.path.exists("/usr/sbin/kamailio") else "")
MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")

needs_kamailio = pytest.mark.skipif(
    not KAMAILIO or not (MODULES / "http_client.so").exists() or not (MODULES / "json.so").exists(),
    reason="kamailio with http_client and json modules not installed "
           "(apt-get install kamailio kamailio-utils-modules kamailio-json-modules)")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(cond: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.05) -> Any:
    """test_agent_fakes.poll with the order these tests call it in."""
    return fakes_poll(cond, timeout_s, every_s, what)


def http_get(port: int, path: str) -> tuple[int, Any]:
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
    except OSError:
        return 0, None
    finally:
        c.close()
    try:
        return r.status, json.loads(body)
    except ValueError:
        return r.status, body


def udp_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Procs:
    """Every process the test starts, each with its log; stop() ends them in reverse order."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - the child holds it; closed by GC
        p = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}"))
        log.close()
        self.procs[name] = p
        return p

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-4000:]

    def alive(self, name: str) -> None:
        p = self.procs[name]
        assert p.poll() is None, f"{name} exited {p.returncode}:\n{self.log(name)}"

    def kill(self, name: str) -> None:
        p = self.procs[name]
        p.kill()
        p.wait(10)

    def stop(self) -> None:
        for p in reversed(self.procs.values()):
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def start_kamailio(procs: Procs, name: str, port: int, agent_port: int, db: Path, static: bool = False,
                   extra: Sequence[str] = ()) -> None:
    """Kamailio on udp 127.0.0.1:port asking the agent on agent_port; `extra` are more -A defines."""
    args = [KAMAILIO, "-f", str(CFG), "-DD", "-E", "-l", f"udp:127.0.0.1:{port}", "-Y", str(procs.tmp),
            "-P", str(procs.tmp / f"{name}.pid"), "-m", "32", "-M", "8",
            "-A", f'AGENT_URL="http://127.0.0.1:{agent_port}"', "-A", f'CENTERS_DB="text://{db}"',
            "-A", 'LAST_RESORT="north,south,west"', "-A", "WORKERS=2"]
    if static:
        args += ["-A", "STATIC_ONLY"]
    for define in extra:
        args += ["-A", define]
    procs.start(name, args)


def wait_listening(procs: Procs, name: str, port: int) -> None:
    poll(lambda: not udp_free(port) or procs.procs[name].poll() is not None, 15, f"{name} listening")
    procs.alive(name)


@dataclass
class Network:
    tmp: Path
    procs: Procs
    cp_port: int
    agents: dict[str, int]  # center -> the agent's HTTP lookup port
    grpc: dict[str, int]  # center -> the agent's gRPC lookup port (empty unless asked for)
    uas: dict[str, int]  # center -> its UAS's SIP (udp) port
    db: Path  # the SIP map Kamailio reads: center id -> that center's SIP address (db_text htable)


def start_network(tmp: Path, procs: Procs, topology: Path, centers: Sequence[str], *,
                  cp_args: Sequence[str] = (), uas_codes: Mapping[str, str] | None = None,
                  grpc: bool = False) -> Network:
    """A control plane on `topology`, a UAS and an agent per center; returns once every agent serves a
    plan. `uas_codes`: a center's UAS final reply instead of 200 (e.g. "180": rings, never answers)."""
    cp_port = free_port()
    # the forecast counts as an hour of calls: the tests' bursts of calls are probes, not demand (with
    # the default prior, a minute of forecast, the live estimate rightly reads 400 calls in a few
    # seconds as a threefold surge and leaves the receivers no spare for a DR plan)
    (tmp / "cp.json").write_text(json.dumps({"demand": {"prior_s": 3600.0}}))
    procs.start("cp", [PY, "-m", "controlplane.cli", "controlplane", *cp_args, "--topology", str(topology),
                       "--store", "embedded", "--listen", f"127.0.0.1:{cp_port}",
                       "--config", str(tmp / "cp.json"), "--port-file", str(tmp / "cp.ports")])
    uas = {c: free_port(socket.SOCK_DGRAM) for c in centers}
    for c, port in uas.items():
        code = ["--code", uas_codes[c]] if uas_codes and c in uas_codes else []
        procs.start(f"uas-{c}", [PY, str(ROOT / "tests" / "sipua.py"), "uas", "--port", str(port),
                                 "--name", c, "--record", str(tmp / f"calls-{c}.jsonl"), *code])
    db = tmp / "db"
    db.mkdir()
    rows = ["key_name(str) key_type(int) value_type(int) key_value(str) expires(int)"]
    rows += [f"{c}:0:0:sip\\:127.0.0.1\\:{p}:0" for c, p in uas.items()]
    (db / "centers").write_text("\n".join(rows) + "\n")
    poll(lambda: (tmp / "cp.ports").exists() or procs.procs["cp"].poll() is not None, 30, "control plane")
    procs.alive("cp")
    agents = {c: free_port() for c in centers}
    grpc_ports = {c: free_port() for c in centers} if grpc else {}
    acd_ports = {c: free_port() for c in centers}
    cfg = tmp / "agent.json"
    # simulated ACDs at 60x: the tests' bursts of calls (each one counted by the agent and offered to
    # the receiving center's ACD) are handled in seconds, not in 4-6 minutes, so they do not eat the
    # spare capacity a DR plan needs; a minute of test = an hour of day. sim_peers offers each routed
    # call to the receiving center's simulated ACD too, as the real trunk would: without it the
    # control plane rightly sees that the calls an agent sends never arrive, and marks the receivers
    # failing
    cfg.write_text(json.dumps({"report_interval_s": 0.5, "drain_notice_s": 0.1, "drain_grace_s": 1.0,
                               "sim_time_scale": 60.0,
                               "sim_peers": {c: f"127.0.0.1:{p}" for c, p in acd_ports.items()}}))
    for c, port in agents.items():
        grpc_arg = ["--grpc", f"127.0.0.1:{grpc_ports[c]}"] if grpc else []
        procs.start(f"agent-{c}", [PY, "-m", "controlplane.cli", "agent", "--center", c,
                                   "--controlplane", f"127.0.0.1:{cp_port}",
                                   "--http", f"127.0.0.1:{port}", *grpc_arg,
                                   "--acd-listen", f"127.0.0.1:{acd_ports[c]}",
                                   "--topology", str(topology), "--state-dir", str(tmp / f"state-{c}"),
                                   "--config", str(cfg)])
    for c in centers:
        poll(lambda c=c: http_get(agents[c], "/healthz")[0] == 200 or procs.procs[f"agent-{c}"].poll(),
             30, f"agent {c} serving a plan")
        procs.alive(f"agent-{c}")
    return Network(tmp, procs, cp_port, agents, grpc_ports, uas, db)
