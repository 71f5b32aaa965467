"""Shared pytest fixtures. Store: real etcd processes (controlplane.store.etcdtest)."""

from controlplane.store.etcdtest import etcd_cluster3, etcd_private, etcd_shared, etcd_shared3  # noqa: F401
