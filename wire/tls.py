"""Client TLS for every gRPC client of the project (agents, the CLI, the console, tests) and the checks
on a process's own certificate files that servers and agents share.

- `read_pem(field, path)`: a file's bytes, or InvalidInput naming the setting and the path;
- `check_cert_key_pair`: a certificate and key that do not belong together are refused at start;
- `ClientTLS` / `client_tls` / `agent_tls`: the files a client presents, read at every (re)connect;
- `open_channel` / `open_sync_channel`: a TLS channel when files are given, else plaintext.

Servers' side (interceptors, roles, server credentials) stays in controlplane/service/auth.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import msgspec

from controlplane.core.model import InvalidInput


def read_pem(field: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InvalidInput(field, path, f"cannot read: {e.strerror}") from None


def check_cert_key_pair(cert_pem: bytes, key_pem: bytes, cert_file: str) -> None:
    """A certificate and key that do not belong together fail every handshake: refuse them here,
    naming the file, instead (a rotation caught between writing the two files, B7)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, None)
    except (ValueError, TypeError) as e:
        raise InvalidInput("tls_cert", cert_file, f"not a PEM certificate and unencrypted key: {e}") from None
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(*fmt) != key.public_key().public_bytes(*fmt):
        raise InvalidInput("tls_key", cert_file, "the key does not match the certificate")


class ClientTLS(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A client's TLS files; read at every (re)connect, so rotated files are picked up."""

    ca_file: str = ""  # "" = the system's roots
    cert_file: str = ""  # this client's certificate (a center's, an operator's)
    key_file: str = ""
    server_name: str = ""  # expected name in the server certificate, when not the endpoint host

    def credentials(self) -> grpc.ChannelCredentials:
        if bool(self.cert_file) != bool(self.key_file):
            raise InvalidInput("tls_cert", self.cert_file, "certificate and key go together")
        return grpc.ssl_channel_credentials(
            read_pem("tls_ca", self.ca_file) if self.ca_file else None,
            read_pem("tls_key", self.key_file) if self.key_file else None,
            read_pem("tls_cert", self.cert_file) if self.cert_file else None,
        )

    def options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def client_tls(ca: str = "", cert: str = "", key: str = "", server_name: str = "") -> ClientTLS | None:
    """None (plaintext) when no file is given."""
    if not (ca or cert or key):
        return None
    if bool(cert) != bool(key):
        field = "tls_key" if cert else "tls_cert"
        raise InvalidInput(field, cert or key, "certificate and key go together")
    return ClientTLS(ca, cert, key, server_name)


def agent_tls(settings: Any) -> ClientTLS | None:
    """From AgentSettings' tls_ca/tls_cert/tls_key/tls_server_name."""
    return client_tls(settings.tls_ca, settings.tls_cert, settings.tls_key, settings.tls_server_name)


def open_channel(endpoint: str, tls: ClientTLS | None, options: list[tuple[str, Any]]) -> grpc.aio.Channel:
    """An asyncio channel: TLS when `tls` is given, else plaintext."""
    if tls is None:
        return grpc.aio.insecure_channel(endpoint, options=options)
    return grpc.aio.secure_channel(endpoint, tls.credentials(), options=[*options, *tls.options()])


def open_sync_channel(endpoint: str, tls: ClientTLS | None, options: list[tuple[str, Any]]) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(endpoint, options=options)
    return grpc.secure_channel(endpoint, tls.credentials(), options=[*options, *tls.options()])
