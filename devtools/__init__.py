"""Development and lab tools, kept out of the production packages (controlplane, agents).

- `devtools.etcd`: real etcd processes on loopback for tests, benches and chaos (EtcdCluster, a test PKI);
- `devtools.up`: `callroute up`, the whole system on one machine for a newcomer;
- `devtools.synth`: synthetic national-size topologies for benches and property tests.

Production code does not import this package; `callroute up` loads it lazily, and tests/test_imports.py
checks the rule.
"""
