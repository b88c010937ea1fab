"""WeiServing model server: gRPC ``weiserving.v1.Inference`` over a model repository.

Modules: :mod:`serving.config` (dataclass configuration, TOML file),
:mod:`serving.repository` (versions, hot reload, warm-up),
:mod:`serving.batching` (pure batcher core + threaded shell, SLO mode),
:mod:`serving.backends` (TensorFlow SavedModel, Python, PyTorch),
:mod:`serving.server` (gRPC service, health, drain), :mod:`serving.status`
(local HTTP status for the sidecar agent), :mod:`serving.cli` (``wei-serve``).
The wire protocol lives in :mod:`protocol.wire`, shared with the client SDK.
"""
