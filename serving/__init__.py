"""WeiServing model server: gRPC ``weiserving.v1.Inference`` over a model repository.

Modules: :mod:`serving.config` (dataclass configuration, TOML file),
:mod:`serving.repository` (versions, hot reload, warm-up),
:mod:`serving.batching` (pure batcher core + threaded shell, SLO mode),
:mod:`serving.backends` (TensorFlow SavedModel, Python, PyTorch),
:mod:`serving.server` (gRPC service, health, drain), :mod:`serving.reports`
(the in-band load report and the status document), :mod:`serving.http` (the
local HTTP endpoints the sidecar agent reads), :mod:`serving.cli` (``wei-serve``).
The wire protocol and the status document's schema live in :mod:`protocol`,
shared with the client SDK and the agent; this package imports no other of ours.
"""
