"""Blobs bigger than etcd's request limit on the Store interface: put_chunked / get_chunked /
delete_chunked, written so a reader sees the complete old or the complete new object (F16).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence

import msgspec

from controlplane.core.model import InvalidInput
from controlplane.store.base import (
    CHUNK_SIZE,
    MAX_CHUNKS,
    MAX_KEY_BYTES,
    MAX_REQUEST_BYTES,
    MAX_TXN_OPS,
    Delete,
    Op,
    Put,
    Store,
    check_key,
)
from controlplane.store.election import Election

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- chunked blobs


class ChunkManifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    version: str
    sha256: str
    count: int
    size: int
    chunk_size: int


_manifest_decoder = msgspec.json.Decoder(ChunkManifest)


def _check_version(version: str | int) -> str:
    v = str(version) if isinstance(version, int) and not isinstance(version, bool) else version
    if not isinstance(v, str) or not v or len(v) > 64 or not all(ch.isalnum() or ch in "-_." for ch in v):
        raise InvalidInput("version", version, "must be an int or 1..64 chars of letters, digits, - _ .")
    return v


def _norm_prefix(prefix: str) -> str:
    check_key("prefix", prefix)
    return prefix if prefix.endswith("/") else prefix + "/"


def manifest_key(prefix: str, version: str | int) -> str:
    return f"{_norm_prefix(prefix)}{_check_version(version)}/manifest"


def chunk_key(prefix: str, version: str | int, index: int) -> str:
    return f"{_norm_prefix(prefix)}{_check_version(version)}/chunk/{index:03d}"


async def put_chunked(store: Store, prefix: str, blob: bytes, *, version: str | int,
                      chunk_size: int = CHUNK_SIZE, election: Election | None = None,
                      extra_ops: Sequence[Op] = (),
                      failpoint: Callable[[str, int], None] | None = None) -> ChunkManifest:
    """Write `blob` under prefix/<version>/chunk/NNN, then its manifest LAST (F16).

    Chunks go in transactions of at most MAX_TXN_OPS ops and MAX_REQUEST_BYTES; the manifest
    (sha256, count, size) goes in one final transaction together with `extra_ops` (e.g. moving a
    "current" pointer), so a reader sees the new object complete or not at all. With `election`,
    every transaction is fenced. `failpoint(step, index)` is called before each write ("chunk",
    first index of the batch; "manifest", 0): tests raise from it to simulate a writer dying there.
    """
    blob = bytes(blob) if isinstance(blob, bytearray | memoryview) else blob
    if not isinstance(blob, bytes):
        raise InvalidInput("blob", type(blob).__name__, "must be bytes")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or \
            not 1 <= chunk_size <= MAX_REQUEST_BYTES - MAX_KEY_BYTES:
        raise InvalidInput("chunk_size", chunk_size,
                           f"must be an int in [1, {MAX_REQUEST_BYTES - MAX_KEY_BYTES}]")
    ver = _check_version(version)
    count = max(1, math.ceil(len(blob) / chunk_size))
    if count > MAX_CHUNKS:
        raise InvalidInput("blob", len(blob), f"needs {count} chunks of {chunk_size}; at most {MAX_CHUNKS}")

    async def write(ops: Sequence[Op]) -> None:
        if election is not None:
            await election.fenced_txn((), ops)
        else:
            await store.txn((), ops)

    batch: list[Op] = []
    batch_bytes = 0
    first = 0
    for i in range(count):
        piece = blob[i * chunk_size:(i + 1) * chunk_size]
        key = chunk_key(prefix, ver, i)
        if batch and (len(batch) == MAX_TXN_OPS or batch_bytes + len(piece) + len(key) > MAX_REQUEST_BYTES):
            if failpoint is not None:
                failpoint("chunk", first)
            await write(batch)
            batch, batch_bytes, first = [], 0, i
        batch.append(Put(key, piece))
        batch_bytes += len(piece) + len(key)
    if failpoint is not None:
        failpoint("chunk", first)
    await write(batch)

    manifest = ChunkManifest(ver, hashlib.sha256(blob).hexdigest(), count, len(blob), chunk_size)
    if failpoint is not None:
        failpoint("manifest", 0)
    await write([Put(manifest_key(prefix, ver), msgspec.json.encode(manifest)), *extra_ops])
    return manifest


async def get_chunked(store: Store, prefix: str, version: str | int) -> bytes | None:
    """The blob written by put_chunked, or None if it is absent, incomplete or does not match its
    manifest's hash (a torn or half-deleted object is never returned)."""
    ver = _check_version(version)
    kv = await store.get(manifest_key(prefix, ver))
    if kv is None:
        return None
    try:
        m = _manifest_decoder.decode(kv.value)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        log.error("chunked object %s%s: unreadable manifest: %s", prefix, ver, e)
        return None
    if not 1 <= m.count <= MAX_CHUNKS:
        log.error("chunked object %s%s: manifest chunk count %d out of range", prefix, ver, m.count)
        return None
    parts: list[bytes] = []
    for i in range(m.count):
        c = await store.get(chunk_key(prefix, ver, i))
        if c is None:
            log.warning("chunked object %s%s: chunk %d missing (being deleted?)", prefix, ver, i)
            return None
        parts.append(c.value)
    blob = b"".join(parts)
    if len(blob) != m.size or hashlib.sha256(blob).hexdigest() != m.sha256:
        log.error("chunked object %s%s: content does not match its manifest", prefix, ver)
        return None
    return blob


async def delete_chunked(store: Store, prefix: str, version: str | int, *,
                         election: Election | None = None) -> None:
    """Delete one object: manifest first (readers stop finding it), then its chunks."""
    ver = _check_version(version)
    base = f"{_norm_prefix(prefix)}{ver}/"
    ops: list[Op] = [Delete(manifest_key(prefix, ver)), Delete(base + "chunk/", prefix=True)]
    for op in ops:
        if election is not None:
            await election.fenced_txn((), [op])
        else:
            await store.txn((), [op])
