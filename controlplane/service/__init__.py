"""The control-plane service: reports in, plans out, the store underneath, no single point of failure.

Modules: settings (one frozen struct), server (wiring, gRPC, the store calls), reports (Report
streams), planwatch (plan feed + WatchPlan), publisher (fenced, chunked plan writes), leader
(LeaderBrain decisions + LeaderLoop shell), operator (OperatorService), metrics (Prometheus).
Nothing here decides routes: that is controlplane.core's job.
"""
