"""The per-center agent: ACD reports to the control plane, the last-known-good plan, and route
lookups for telephony switches (HTTP/1.1, gRPC, in-process). See agents/main.py for the wiring."""
