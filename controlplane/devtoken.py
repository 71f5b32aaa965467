"""The development credential of `callroute up`: a bearer token, so that even on a laptop the operator
named in the audit trail comes from a credential, never from a request field (issue 15 item 3).

`callroute up` writes, for its control plane's endpoint:
  - `<state dir>/dev-tokens.yaml`: the control plane's token table (`--tokens`), one admin token
    named after the login user (sha256 only, as `callroute certs init` writes them);
  - the token itself in `dev_token_path(endpoint)`, mode 0600 in a 0700 directory under the user's
    config dir ($CALLROUTE_DEV_TOKEN_DIR, else $XDG_CONFIG_HOME/callroute/dev-tokens, else
    ~/.config/callroute/dev-tokens), one file per endpoint so two `up`s on other ports coexist.
The CLI, given no --token for a loopback endpoint, sends the token found there
(`read_dev_token`): the README's quick start works unchanged, and the audit trail names the login
user whatever `--operator` says. `up` removes the file when it stops. Must not: be read for an
endpoint off loopback (a token is sent in the clear only to loopback), or accept a token file
others can read or write.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import os
import re
import secrets
import stat
from pathlib import Path

import msgspec

ENV_DIR = "CALLROUTE_DEV_TOKEN_DIR"
TOKENS_FILE = "dev-tokens.yaml"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def dev_token_dir() -> Path:
    d = os.environ.get(ENV_DIR)
    if d:
        return Path(d)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "callroute" / "dev-tokens"


def dev_token_path(endpoint: str) -> Path:
    return dev_token_dir() / _UNSAFE.sub("_", endpoint)


def login_name() -> str:
    """The operator name for the dev token: the login user, reduced to an id's characters."""
    name = ""
    with contextlib.suppress(Exception):
        name = getpass.getuser()
    name = _UNSAFE.sub("-", name)[:64].strip("-.")
    return name or "dev-operator"


def write_dev_tokens(state_dir: Path, endpoint: str, operator: str) -> tuple[Path, Path, str]:
    """(token table for --tokens, the client's token file, the token) for `endpoint`."""
    token = secrets.token_urlsafe(32)
    table = state_dir / TOKENS_FILE
    digest = hashlib.sha256(token.encode()).hexdigest()
    body = msgspec.json.encode({"tokens": {digest: {"name": operator, "role": "admin"}}})  # JSON is YAML
    _write_private(table, body)
    path = dev_token_path(endpoint)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    _write_private(path, token.encode())
    return table, path, token


def read_dev_token(endpoint: str) -> str | None:
    """The dev token `up` wrote for `endpoint`, or None (none, or a file others may read or write)."""
    path = dev_token_path(endpoint)
    try:
        st = path.stat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def remove_dev_token(endpoint: str, token: str) -> None:
    """Remove the endpoint's token file if it still holds `token` (not a later `up`'s)."""
    if read_dev_token(endpoint) == token:
        with contextlib.suppress(OSError):
            dev_token_path(endpoint).unlink()


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
