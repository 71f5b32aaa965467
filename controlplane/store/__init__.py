"""The store: one asyncio interface (base.Store), an etcd backend and an embedded backend.

Import from here: `from controlplane.store import Store, parse_store_url, Election, ...`.
Test tooling (real etcd processes) lives in devtools.etcd and is not imported here.
"""

from controlplane.store.base import (
    CHUNK_SIZE,
    KV,
    MAX_REQUEST_BYTES,
    MAX_TXN_OPS,
    Compacted,
    Compare,
    CompareTarget,
    Delete,
    DeleteResult,
    EventKind,
    FenceLost,
    Get,
    Lease,
    LeaseExpired,
    Op,
    PermissionDenied,
    Put,
    PutResult,
    RangeResult,
    Snapshot,
    Store,
    StoreClosed,
    StoreError,
    StoreSettings,
    StoreStatus,
    StoreUnavailable,
    TxnResult,
    WatchEvent,
    create_revision_is,
    key_missing,
    list_and_watch,
    mod_revision_is,
    value_is,
    version_is,
    watch_map,
    watch_value,
)
from controlplane.store.chunked import ChunkManifest, delete_chunked, get_chunked, put_chunked
from controlplane.store.election import Election, Leader, LeaseKeeper
from controlplane.store.embedded import EmbeddedStore
from controlplane.store.etcd import EtcdStore, TLSConfig, parse_store_url

__all__ = [
    "CHUNK_SIZE", "KV", "MAX_REQUEST_BYTES", "MAX_TXN_OPS", "ChunkManifest", "Compacted",
    "Compare",
    "CompareTarget", "Delete", "DeleteResult", "Election", "EmbeddedStore", "EtcdStore", "EventKind",
    "FenceLost", "Get", "Leader", "Lease", "LeaseExpired", "LeaseKeeper", "Op", "PermissionDenied", "Put",
    "PutResult", "RangeResult", "Snapshot", "Store", "StoreClosed", "StoreError", "StoreSettings",
    "StoreStatus", "StoreUnavailable", "TLSConfig", "TxnResult", "WatchEvent", "create_revision_is",
    "delete_chunked", "get_chunked", "key_missing", "list_and_watch", "mod_revision_is", "parse_store_url",
    "put_chunked", "value_is", "version_is", "watch_map", "watch_value",
]
