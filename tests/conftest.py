"""Shared pytest fixtures. Store: real etcd processes (devtools.etcd); `controlplane`:
a real control-plane process on the embedded store and examples/small.yaml."""

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings
from test_agent_fakes import ROOT, controlplane_proc

from devtools.etcd import EtcdCluster, etcd_binary

SMALL = ROOT / "examples" / "small.yaml"


# Real etcd (devtools.etcd). A test using one of these is skipped, not failed, where etcd is not on PATH.
_NO_ETCD = "etcd is not on PATH (install the Debian package etcd-server to run etcd tests)"


def _require_etcd() -> None:
    if etcd_binary() is None:
        pytest.skip(_NO_ETCD)


@pytest.fixture(scope="session")
def etcd_shared() -> Iterator[EtcdCluster]:
    """One single-member etcd for the whole session. Tests must not stop, kill or pause it and
    must use their own key prefix."""
    _require_etcd()
    with EtcdCluster(1) as c:
        yield c


@pytest.fixture(scope="session")
def etcd_shared3() -> Iterator[EtcdCluster]:
    """One 3-member etcd for the whole session, same rules as etcd_shared."""
    _require_etcd()
    with EtcdCluster(3) as c:
        yield c


@pytest.fixture
def etcd_private() -> Iterator[EtcdCluster]:
    """A single-member etcd of this test's own: kill, restart and pause it freely."""
    _require_etcd()
    with EtcdCluster(1) as c:
        yield c


@pytest.fixture
def etcd_cluster3() -> Iterator[EtcdCluster]:
    """A 3-member etcd of this test's own."""
    _require_etcd()
    with EtcdCluster(3) as c:
        yield c

# Hypothesis profiles. "ci" is derandomized: a run explores the same examples every time, so a red CI
# points at a change, never at the draw (random exploration is `make fuzz`'s job). "fuzz" draws fresh
# examples, FUZZ_SCALE times as many as each test's own max_examples, and keeps its failures in the example
# database. `make test` and CI=true pick "ci"; `--hypothesis-profile=NAME` overrides either.
FUZZ_SCALE = 10
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("fuzz", derandomize=False, max_examples=1000, print_blob=True)
if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    settings.load_profile("ci")


def pytest_collection_modifyitems(items) -> None:
    """Under "fuzz", scale every property test's own max_examples (explicit per-test settings win over the
    profile's, and are sized for CI's time budget, not for a search)."""
    if settings.get_current_profile_name() != "fuzz":
        return
    for item in items:
        fn = getattr(item, "obj", None)
        # @given tests keep their settings in this attribute of hypothesis (set by @settings)
        own = getattr(fn, "_hypothesis_internal_use_settings", None)
        if own is not None and hasattr(fn, "hypothesis"):
            fn._hypothesis_internal_use_settings = settings(own, max_examples=own.max_examples * FUZZ_SCALE)
        machine_case = getattr(item, "cls", None)
        own = getattr(machine_case, "settings", None)  # RuleBasedStateMachine.TestCase
        if isinstance(own, settings) and hasattr(machine_case, "runTest"):
            machine_case.settings = settings(own, max_examples=own.max_examples * FUZZ_SCALE)


@pytest.fixture
def controlplane(tmp_path):
    if not SMALL.exists():
        pytest.skip("examples/small.yaml not present")
    with controlplane_proc(tmp_path, SMALL) as cp:
        yield cp
