"""What the processes on both ends of the wire share: agents, the control plane, the CLI and the console
import it, so agents never import the control plane's service.

- `wire.convert`: protobuf messages <-> the core's values (checked, naming the field);
- `wire.tls`: client TLS and the certificate-file checks;
- `wire.settings`: the one settings loader (file + flags) and HOST:PORT / loopback checks;
- `wire.textsafe`: operator-visible text kept literal in logs, terminals and reports.

It depends on controlplane.core (the values) and the generated protobuf package `callroute`, nothing else
of ours (tests/test_imports.py).
"""
