"""Real etcd processes for tests and the chaos harness: start, stop, kill, pause, always cleaned up.

`EtcdCluster(n)` runs n members of the installed etcd-server on free loopback ports in a temp dir,
with fast elections (heartbeat 50 ms, election timeout 500 ms) and auto-compaction off (tests
compact explicitly). Members can be stopped (SIGTERM), killed (SIGKILL), paused (SIGSTOP) and
resumed; readiness is polled with a deadline, never slept for. Optional client TLS (a throwaway CA
made with `cryptography`) and auth (users and roles through etcdctl) for security tests.

The pytest fixtures over it (`etcd_shared`, `etcd_shared3`, `etcd_private`, `etcd_cluster3`) are in
tests/conftest.py. Everything listens on 127.0.0.1 only. This module is a dev tool: production code
must not import it (tests/test_imports.py).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from aetcd import rpc

# fast elections so failover tests take well under a second; etcd wants election >= 5 x heartbeat
HEARTBEAT_MS = 50
ELECTION_MS = 500
# a member starts in ~0.5 s on these machines; 20 s covers a loaded 2-core box without hiding a hang
START_TIMEOUT_S = 20.0
# one health probe: a linearizable read answers in ms when there is a leader
PROBE_TIMEOUT_S = 0.5
# how often readiness is polled while waiting
POLL_S = 0.05
# SIGTERM gets this long to flush before SIGKILL
STOP_TIMEOUT_S = 5.0
# a port we were given may be taken by someone else before etcd binds it: retry the cluster start
START_ATTEMPTS = 3


def etcd_binary() -> str | None:
    return shutil.which("etcd")


def etcdctl_binary() -> str | None:
    return shutil.which("etcdctl")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- throwaway PKI


@dataclass(frozen=True)
class TestPKI:
    """Files of a test CA, a server certificate for 127.0.0.1/localhost, and client certificates."""

    __test__ = False  # not a pytest test class despite the name

    ca_file: str
    ca_key_file: str
    server_cert: str
    server_key: str
    clients: dict[str, tuple[str, str]]  # name -> (cert file, key file)


def make_pki(directory: str | Path, client_names: Sequence[str] = ("root",), *,
             ca_name: str = "callroute-test-ca") -> TestPKI:
    """A CA and certificates (ECDSA P-256, valid one day) written to `directory`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    # certificates carry wall-clock validity by nature; this is test tooling, not a decision
    now = datetime.datetime.now(datetime.UTC)

    def write_key(key: ec.EllipticCurvePrivateKey, name: str) -> str:
        p = d / name
        p.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
        return str(p)

    def write_cert(cert: x509.Certificate, name: str) -> str:
        p = d / name
        p.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return str(p)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca = (x509.CertificateBuilder().subject_name(ca_subject).issuer_name(ca_subject)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def issue(cn: str, server: bool) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        import ipaddress

        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(ca_subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.ExtendedKeyUsage(
                 [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
                 if server else [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(ca_key, hashes.SHA256()), key

    scert, skey = issue("localhost", True)
    clients = {}
    for name in client_names:
        ccert, ckey = issue(name, False)
        clients[name] = (write_cert(ccert, f"client-{name}.crt"), write_key(ckey, f"client-{name}.key"))
    return TestPKI(write_cert(ca, "ca.crt"), write_key(ca_key, "ca.key"), write_cert(scert, "server.crt"),
                   write_key(skey, "server.key"), clients)


# ---------------------------------------------------------------- members


class EtcdStartError(RuntimeError):
    pass


class EtcdMember:
    """One etcd process. Its data dir survives stop/kill, so start() again is a restart."""

    def __init__(self, name: str, data_dir: Path, client_port: int, peer_port: int, *,
                 initial_cluster: str, token: str, pki: TestPKI | None, extra_args: Sequence[str]) -> None:
        self.name = name
        self.data_dir = data_dir
        self.client_port = client_port
        self.peer_port = peer_port
        self.initial_cluster = initial_cluster
        self.token = token
        self.pki = pki
        self.extra_args = tuple(extra_args)
        self.log_path = data_dir.parent / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{'https' if self.pki else 'http'}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def args(self) -> list[str]:
        binary = etcd_binary()
        if binary is None:
            raise EtcdStartError("etcd is not on PATH (Debian package etcd-server)")
        a = [binary, "--name", self.name, "--data-dir", str(self.data_dir),
             "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
             "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
             "--initial-cluster", self.initial_cluster, "--initial-cluster-token", self.token,
             "--initial-cluster-state", "new",
             "--heartbeat-interval", str(HEARTBEAT_MS), "--election-timeout", str(ELECTION_MS),
             # 0 = off: tests compact explicitly and must see history exactly as written
             "--auto-compaction-retention", "0",
             "--logger", "zap", "--log-level", "warn"]
        if self.pki is not None:
            a += ["--cert-file", self.pki.server_cert, "--key-file", self.pki.server_key,
                  "--trusted-ca-file", self.pki.ca_file, "--client-cert-auth"]
        return a + list(self.extra_args)

    def start(self) -> None:
        if self.running:
            return
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(self.args(), stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.paused = False

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Graceful stop (SIGTERM), SIGKILL if it does not exit in time."""
        if self.proc is None:
            return
        self.resume()
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye to peers (a crash)."""
        if self.proc is None:
            return
        self._signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP: the process holds its sockets open and answers nothing (a hung member)."""
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.paused:
            self._signal(signal.SIGCONT)
            self.paused = False

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def _channel(self) -> grpc.Channel:
        if self.pki is None:
            return grpc.insecure_channel(self.endpoint)
        cert, key = self.pki.clients.get("root") or next(iter(self.pki.clients.values()))
        creds = grpc.ssl_channel_credentials(Path(self.pki.ca_file).read_bytes(), Path(key).read_bytes(),
                                             Path(cert).read_bytes())
        return grpc.secure_channel(self.endpoint, creds)

    def status(self, timeout_s: float = PROBE_TIMEOUT_S) -> rpc.StatusResponse | None:
        """The member's Status, or None if it does not answer in time."""
        if not self.running or self.paused:
            return None
        with self._channel() as ch:
            try:
                stub = rpc.MaintenanceStub(ch)
                st: rpc.StatusResponse = stub.Status(rpc.StatusRequest(), timeout=timeout_s)
                return st
            except grpc.RpcError:
                return None

    def healthy(self, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
        """True when the member serves a linearizable read (it has a leader and a quorum)."""
        if not self.running or self.paused:
            return False
        with self._channel() as ch:
            try:
                rpc.KVStub(ch).Range(rpc.RangeRequest(key=b"/etcdtest/health"), timeout=timeout_s)
                return True
            except grpc.RpcError as e:
                # with auth on, an anonymous read is refused only after the member is up and led
                return e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
                                    grpc.StatusCode.UNAUTHENTICATED) and "auth" in (e.details() or "")


# ---------------------------------------------------------------- clusters

# clusters not yet closed, killed at interpreter exit if a test run is interrupted: etcd runs in its
# own session (so a Ctrl-C aimed at pytest does not hit it first) and would otherwise outlive us
_LIVE: weakref.WeakSet[EtcdCluster] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for c in list(_LIVE):
        c.close()


class EtcdCluster:
    """n etcd members on loopback; a context manager that always kills and removes everything."""

    def __init__(self, n: int = 1, *, base_dir: str | None = None, tls: bool = False,
                 client_names: Sequence[str] = ("root",), extra_args: Sequence[str] = ()) -> None:
        if n not in (1, 3, 5):
            raise ValueError(f"n={n}: etcd clusters here have 1, 3 or 5 members")
        self.n = n
        self.dir = Path(tempfile.mkdtemp(prefix="callroute-etcd-", dir=base_dir))
        self.pki = make_pki(self.dir / "pki", client_names) if tls else None
        self.extra_args = tuple(extra_args)
        self.members: list[EtcdMember] = []
        self.root_password: str | None = None
        self._make_members()
        _LIVE.add(self)

    def _make_members(self) -> None:
        ports = [(free_port(), free_port()) for _ in range(self.n)]
        token = f"callroute-test-{uuid.uuid4().hex[:12]}"
        initial = ",".join(f"m{i}=http://127.0.0.1:{pp}" for i, (_, pp) in enumerate(ports))
        self.members = [EtcdMember(f"m{i}", self.dir / f"m{i}" / "data", cp, pp, initial_cluster=initial,
                                   token=token, pki=self.pki, extra_args=self.extra_args)
                        for i, (cp, pp) in enumerate(ports)]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def url(self) -> str:
        return "etcd://" + ",".join(self.endpoints)

    def start(self, timeout_s: float = START_TIMEOUT_S) -> EtcdCluster:
        for attempt in range(START_ATTEMPTS):
            for m in self.members:
                m.start()
            try:
                self.wait_healthy(timeout_s)
                return self
            except EtcdStartError:
                logs = "\n".join(m.log_tail() for m in self.members)
                for m in self.members:
                    m.kill()
                if "address already in use" in logs and attempt + 1 < START_ATTEMPTS:
                    for i in range(self.n):
                        shutil.rmtree(self.dir / f"m{i}", ignore_errors=True)
                    self._make_members()
                    continue
                raise
        raise AssertionError("unreachable")

    def wait_healthy(self, timeout_s: float = START_TIMEOUT_S, members: Sequence[int] | None = None) -> None:
        """Poll until every listed (default: every running, unpaused) member serves linearizable reads."""
        deadline = time.monotonic() + timeout_s
        idx = list(members) if members is not None else [
            i for i, m in enumerate(self.members) if m.running and not m.paused]
        while True:
            dead = [self.members[i].name for i in idx if not self.members[i].running]
            if dead:
                raise EtcdStartError(f"etcd member(s) {dead} exited:\n"
                                     + "\n".join(self.members[i].log_tail() for i in idx))
            if all(self.members[i].healthy() for i in idx):
                return
            if time.monotonic() >= deadline:
                raise EtcdStartError(f"etcd not healthy within {timeout_s}s:\n"
                                     + "\n".join(self.members[i].log_tail() for i in idx))
            time.sleep(POLL_S)

    def leader(self, timeout_s: float = START_TIMEOUT_S) -> int:
        """Index of the current raft leader (polls until one is known)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for i, m in enumerate(self.members):
                st = m.status()
                if st is not None and st.leader and st.leader == st.header.member_id:
                    return i
            if time.monotonic() >= deadline:
                raise EtcdStartError(f"no etcd leader within {timeout_s}s")
            time.sleep(POLL_S)

    def kill(self, i: int) -> None:
        self.members[i].kill()

    def stop(self, i: int) -> None:
        self.members[i].stop()

    def pause(self, i: int) -> None:
        self.members[i].pause()

    def resume(self, i: int) -> None:
        self.members[i].resume()

    def restart(self, i: int, *, wait: bool = True, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start a stopped or killed member again from its data dir."""
        m = self.members[i]
        if m.running:
            m.kill()
        m.start()
        if wait:
            self.wait_healthy(timeout_s, members=[i])

    def etcdctl(self, *args: str, user: str | None = None, timeout_s: float = 10.0) -> str:
        """Run etcdctl (API v3) against this cluster; returns stdout, raises on failure."""
        binary = etcdctl_binary()
        if binary is None:
            raise EtcdStartError("etcdctl is not on PATH")
        cmd = [binary, "--endpoints", ",".join(m.client_url for m in self.members if m.running),
               "--dial-timeout", "2s", "--command-timeout", "5s"]
        if self.pki is not None:
            cert, key = self.pki.clients.get("root") or next(iter(self.pki.clients.values()))
            cmd += ["--cacert", self.pki.ca_file, "--cert", cert, "--key", key]
        if user is not None:
            cmd += ["--user", user]
        env = dict(os.environ, ETCDCTL_API="3")
        r = subprocess.run(cmd + list(args), capture_output=True, timeout=timeout_s, env=env, check=False)
        if r.returncode != 0:
            raise EtcdStartError(f"etcdctl {' '.join(args)} failed: {r.stderr.decode(errors='replace')}")
        return r.stdout.decode(errors="replace")

    def enable_auth(self, root_password: str) -> None:
        """Create root (with the root role) and switch auth on; later etcdctl calls use root."""
        self.etcdctl("user", "add", f"root:{root_password}")
        self.etcdctl("role", "add", "root")
        self.etcdctl("user", "grant-role", "root", "root")
        self.etcdctl("auth", "enable")
        self.root_password = root_password

    def add_user(self, name: str, password: str, *, read: Sequence[str] = (), readwrite: Sequence[str] = ()
                 ) -> None:
        """A user whose role may read the `read` prefixes and read/write the `readwrite` prefixes."""
        root = f"root:{self.root_password}" if self.root_password else None
        self.etcdctl("user", "add", f"{name}:{password}", user=root)
        role = f"{name}-role"
        self.etcdctl("role", "add", role, user=root)
        for perm, prefixes in (("read", read), ("readwrite", readwrite)):
            for p in prefixes:
                self.etcdctl("role", "grant-permission", role, perm, p, "--prefix=true", user=root)
        self.etcdctl("user", "grant-role", name, role, user=root)

    def close(self) -> None:
        for m in self.members:
            with contextlib.suppress(Exception):
                m.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
        _LIVE.discard(self)

    def __enter__(self) -> EtcdCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def etcd_cluster(n: int = 1, **kwargs: object) -> Iterator[EtcdCluster]:
    with EtcdCluster(n, **kwargs) as c:  # type: ignore[arg-type]
        yield c
