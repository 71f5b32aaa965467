"""Shared pytest fixtures. Store: real etcd processes (controlplane.store.etcdtest); `controlplane`:
a real control-plane process on the embedded store and examples/small.yaml."""

import os
import subprocess
import sys

import pytest
from test_agent_fakes import ROOT, free_port, poll

from controlplane.store.etcdtest import etcd_cluster3, etcd_private, etcd_shared, etcd_shared3  # noqa: F401

SMALL = ROOT / "examples" / "small.yaml"


@pytest.fixture
def controlplane(tmp_path):
    if not SMALL.exists():
        pytest.skip("examples/small.yaml not present")
    port, mport = free_port(), free_port()
    log = open(tmp_path / "cp.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "controlplane.service", "--topology", str(SMALL), "--store", "embedded",
         "--listen", f"127.0.0.1:{port}", "--metrics", f"127.0.0.1:{mport}",
         "--port-file", str(tmp_path / "cp.ports")],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL)
    try:
        poll(lambda: (tmp_path / "cp.ports").exists() or proc.poll() is not None, 30, what="control plane")
        assert proc.poll() is None, (tmp_path / "cp.log").read_text()
        yield f"127.0.0.1:{port}", mport
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
