"""`callroute certs`: a development PKI for mTLS between agents, operators, control plane and etcd.

`init_pki(dir, centers, operators)` writes a CA, the control plane's server certificate, one client
certificate per center (CN = center id, URI SAN spiffe://callroute/center/<id>: the identity the
control plane binds Report and WatchPlan streams to), one per operator (URI SAN
spiffe://callroute/operator/<name>), etcd server and client certificates, and the operator tokens
file (tokens.yaml: sha256 of each token -> name and role; the tokens themselves go to
operators/<name>.token, readable only by the owner). `rotate_server(dir)` re-issues the server
certificates from the same CA (the control plane picks them up without a restart).

Every file is written to a temporary name and renamed, so a process re-reading a rotated file never
sees half of one; keys are 0600 from the moment they exist. Must not: overwrite an existing CA (every
issued certificate would silently stop verifying), or be used as a production CA (keys are
unencrypted on disk).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from controlplane.core.model import InvalidInput, check_id

# SPIFFE-style identities in the URI SAN: the control plane trusts these, not the CN, so that a
# certificate issued for another purpose with a center's name as CN cannot speak for that center
SPIFFE_CENTER = "spiffe://callroute/center/"
SPIFFE_OPERATOR = "spiffe://callroute/operator/"
SPIFFE_CONTROLPLANE = "spiffe://callroute/controlplane"
# the development CA outlives many leaf rotations; a year is how long a dev/test network lives
CA_VALID_DAYS = 365
# leaf certificates are short-lived so that rotation is exercised routinely rather than discovered
# broken on the day a certificate expires
LEAF_VALID_DAYS = 90
# tolerate clocks a few minutes behind the issuing machine's
BACKDATE = datetime.timedelta(minutes=5)
# the control plane's default listener is on loopback; more names via --server-names
DEFAULT_SERVER_NAMES = ("127.0.0.1", "localhost")
# 32 random bytes: brute force is out of reach; url-safe so it survives shells and YAML
TOKEN_BYTES = 32
# a network has ~10 centers; more than this on one command line is a pasted file gone wrong
MAX_CENTERS = 1000
MAX_OPERATORS = 1000
ROLES = ("viewer", "operator", "admin")
# keys readable by their owner only; certificates are public
KEY_MODE = 0o600
CERT_MODE = 0o644
# the etcd client certificate's CN: with --client-cert-auth etcd takes it as the user name
ETCD_CLIENT_CN = "controlplane"


class PkiFiles(msgspec.Struct, frozen=True):
    """Where `init_pki` put everything (absolute paths)."""

    directory: str
    ca_cert: str
    ca_key: str
    server_cert: str
    server_key: str
    centers: dict[str, tuple[str, str]]  # center id -> (cert, key)
    operators: dict[str, tuple[str, str, str]]  # name -> (cert, key, token file)
    etcd_server: tuple[str, str]
    etcd_client: tuple[str, str]
    tokens: str  # "" when no operators were given


def hash_token(token: str) -> str:
    """What tokens.yaml keys on: the file can leak without leaking a usable token."""
    return hashlib.sha256(token.encode()).hexdigest()


def parse_operators(value: str) -> list[tuple[str, str]]:
    """'alice:admin,bob:operator' -> [(name, role)]; InvalidInput names the bad entry."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for item in (x.strip() for x in value.split(",")):
        if not item:
            continue
        name, sep, role = item.partition(":")
        check_id("--operators", name)
        if not sep or role not in ROLES:
            raise InvalidInput("--operators", item, f"must be NAME:ROLE with ROLE one of {', '.join(ROLES)}")
        if name in seen:
            raise InvalidInput("--operators", name, "named twice")
        seen.add(name)
        out.append((name, role))
    if len(out) > MAX_OPERATORS:
        raise InvalidInput("--operators", len(out), f"more than {MAX_OPERATORS} operators")
    return out


def parse_centers(value: str) -> list[str]:
    out = [c.strip() for c in value.split(",") if c.strip()]
    for c in out:
        check_id("--centers", c)
    if len(set(out)) != len(out):
        raise InvalidInput("--centers", value, "a center is named twice")
    if len(out) > MAX_CENTERS:
        raise InvalidInput("--centers", len(out), f"more than {MAX_CENTERS} centers")
    return out


# ---------------------------------------------------------------- writing files


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomically: a reader sees the old file or the new one. The temporary file is created with
    `mode`, so a key is never world-readable, not even for an instant."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # O_CREAT's mode is filtered by the umask; say it exactly
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


def _cert_pem(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(cert.public_bytes(serialization.Encoding.PEM))


# ---------------------------------------------------------------- issuing


def _now() -> datetime.datetime:
    # certificates carry wall-clock validity by nature; this is tooling, not a routing decision
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    # P-256: fast handshakes, supported by gRPC's BoringSSL and by etcd's Go TLS
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(common_name: str = "callroute development CA") -> tuple[Any, Any]:
    """A self-signed CA certificate and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE).not_valid_after(now + datetime.timedelta(days=CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(ca_cert: Any, ca_key: Any, common_name: str, *, server_names: Sequence[str] = (),
          uris: Sequence[str] = (), client: bool = False, server: bool = False) -> tuple[Any, Any]:
    """A leaf certificate signed by the CA: DNS/IP SANs from `server_names`, URI SANs from `uris`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = _new_key()
    now = _now()
    sans: list[x509.GeneralName] = []
    for n in server_names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    sans += [x509.UniformResourceIdentifier(u) for u in uris]
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE).not_valid_after(now + datetime.timedelta(days=LEAF_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(ca_key, hashes.SHA256()), key


def center_of(cert_pem: bytes) -> str | None:
    """The center a certificate speaks for (its spiffe://callroute/center/<id> URI SAN), or None."""
    return _spiffe_name(cert_pem, SPIFFE_CENTER)


def operator_of(cert_pem: bytes) -> str | None:
    return _spiffe_name(cert_pem, SPIFFE_OPERATOR)


def _spiffe_name(cert_pem: bytes, prefix: str) -> str | None:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
            .get_values_for_type(x509.UniformResourceIdentifier)
    except (ValueError, x509.ExtensionNotFound):
        return None
    names = [u[len(prefix):] for u in uris if u.startswith(prefix)]
    # two identities in one certificate is ambiguous: trust neither
    if len(names) != 1:
        return None
    try:
        check_id("certificate", names[0])
    except InvalidInput:
        return None
    return names[0]


def _load_ca(d: Path) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), None)
    except OSError as e:
        raise InvalidInput("DIR", str(d), f"no CA here (ca.crt, ca.key): {e.strerror}") from None
    except ValueError as e:
        raise InvalidInput("DIR", str(d), f"ca.crt/ca.key unreadable: {e}") from None
    return cert, key


def _write_pair(d: Path, stem: str, cert: Any, key: Any) -> tuple[str, str]:
    c, k = d / f"{stem}.crt", d / f"{stem}.key"
    # key first: a reader that sees the new certificate finds its key already in place (and the
    # control plane's reloader checks that the pair matches before using it)
    _write(k, _key_pem(key), KEY_MODE)
    _write(c, _cert_pem(cert), CERT_MODE)
    return str(c.resolve()), str(k.resolve())


def init_pki(directory: str | Path, centers: Sequence[str], operators: Sequence[tuple[str, str]] = (),
             *, server_names: Sequence[str] = DEFAULT_SERVER_NAMES) -> PkiFiles:
    """Write the whole development PKI to `directory` (which must not already hold a CA)."""
    d = Path(directory)
    for c in centers:
        check_id("centers", c)
    for name, role in operators:
        check_id("operators", name)
        if role not in ROLES:
            raise InvalidInput("operators", f"{name}:{role}", f"role must be one of {', '.join(ROLES)}")
    if not centers:
        raise InvalidInput("centers", "", "at least one center is needed")
    if (d / "ca.key").exists() or (d / "ca.crt").exists():
        raise InvalidInput("DIR", str(d), "already holds a CA; re-issuing it would invalidate every "
                                          "certificate signed by it (use another directory, or "
                                          "`certs rotate` for new server certificates)")
    d.mkdir(parents=True, exist_ok=True)
    ca, ca_key = make_ca()
    ca_cert_file, ca_key_file = _write_pair(d, "ca", ca, ca_key)
    server = _write_pair(d, "controlplane", *issue(ca, ca_key, "callroute-controlplane",
                                                   server_names=server_names,
                                                   uris=[SPIFFE_CONTROLPLANE], server=True))
    center_files = {
        c: _write_pair(d / "centers", c, *issue(ca, ca_key, c, uris=[SPIFFE_CENTER + c], client=True))
        for c in centers
    }
    op_files: dict[str, tuple[str, str, str]] = {}
    table: dict[str, dict[str, str]] = {}
    for name, role in operators:
        cert, key = _write_pair(d / "operators", name, *issue(ca, ca_key, name, uris=[SPIFFE_OPERATOR + name],
                                                              client=True))
        token = secrets.token_urlsafe(TOKEN_BYTES)
        tf = d / "operators" / f"{name}.token"
        _write(tf, (token + "\n").encode(), KEY_MODE)
        table[hash_token(token)] = {"name": name, "role": role}
        op_files[name] = (cert, key, str(tf.resolve()))
    tokens = ""
    if operators:
        import yaml

        text = ("# callroute operator tokens: sha256(token) -> who and role (viewer < operator < admin).\n"
                "# The tokens themselves are not here; each operator's is in operators/<name>.token.\n"
                + yaml.safe_dump({"tokens": table}, sort_keys=True))
        tp = d / "tokens.yaml"
        # hashes only, yet who-has-which-role is nobody else's business either
        _write(tp, text.encode(), KEY_MODE)
        tokens = str(tp.resolve())
    etcd_server = _write_pair(d / "etcd", "server", *issue(ca, ca_key, "etcd", server_names=server_names,
                                                           server=True, client=True))
    etcd_client = _write_pair(d / "etcd", "client", *issue(ca, ca_key, ETCD_CLIENT_CN, client=True))
    return PkiFiles(str(d.resolve()), ca_cert_file, ca_key_file, *server, center_files, op_files,
                    etcd_server, etcd_client, tokens)


def rotate_server(directory: str | Path, *,
                  server_names: Sequence[str] = DEFAULT_SERVER_NAMES) -> tuple[str, str]:
    """New control-plane (and etcd server) certificates from the directory's CA; returns the
    control plane's (cert, key). Running replicas use them for new connections without a restart."""
    d = Path(directory)
    ca, ca_key = _load_ca(d)
    _write_pair(d / "etcd", "server", *issue(ca, ca_key, "etcd", server_names=server_names,
                                             server=True, client=True))
    return _write_pair(d, "controlplane", *issue(ca, ca_key, "callroute-controlplane",
                                                 server_names=server_names, uris=[SPIFFE_CONTROLPLANE],
                                                 server=True))


# ---------------------------------------------------------------- CLI
