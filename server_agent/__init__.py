"""Sidecar agent: probes its pod and publishes a dynamic capacity weight to ZooKeeper.

The I/O-free cores, each fed events and the current time and returning decisions:

- :mod:`server_agent.probes` -- :class:`~server_agent.probes.ProbeEngine`
  (startup/readiness/liveness with Kubernetes semantics) and the handlers that
  do one check each (exec, HTTP GET, TCP, gRPC health, OIP ServerLive/ServerReady/ModelReady).
- :mod:`server_agent.weight` -- :class:`~server_agent.weight.WeightController`:
  capacity x health x slow-start, smoothed, clamped, rate-limited publishes.
- :mod:`server_agent.oip_metrics` -- an OIP server's Prometheus metrics (Triton,
  MLServer) read into figures; :mod:`server_agent.oip_tracker` turns them, scrape
  by scrape, into the estimator's work totals and the controller's samples.
- :mod:`server_agent.drain` -- when the shutdown's in-flight wait may end.

Local building blocks: :mod:`server_agent.plugins` (business health plugins
from ``--plugin-dir``), :mod:`server_agent.capacity` and
:mod:`server_agent.k8s` (cores, GPUs, pod and node, calibration),
:mod:`server_agent.status` (the model server's status as a sample),
:mod:`server_agent.config` (frozen configuration) and
:mod:`server_agent.errors` (the error root); :mod:`server_agent.lifecycle`
(registration phases as a pure table).

The process shell only drives them: :mod:`server_agent.agent` (the run loop
and the drain -> wait -> deregister shutdown), :mod:`server_agent.frontend`
(what differs by the server's protocol), :mod:`server_agent.server_io`
(wei-serve: status reads, plugin predicts, probe handlers),
:mod:`server_agent.oip_io` (the same for any Open Inference Protocol server),
:mod:`server_agent.http` (/healthz /readyz /startupz /livez /metrics /status
/drain), :mod:`server_agent.cli`
(``wei-agent run|probe|drain|manifest``) and :mod:`server_agent.manifest`
(the Kubernetes Deployment, built with the kubernetes client's models).
"""
