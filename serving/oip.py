"""What the Open Inference Protocol asks of the server, for its gRPC and REST shells alike.

:mod:`serving.oip_grpc` (``inference.GRPCInferenceService``) and
:mod:`serving.oip_rest` (``/v2``) differ only in how bytes travel; the
answers are built here from the model manager's snapshot, and an infer call
becomes the same :class:`~serving.inference.Call` that ``weiserving.v1``
Predict makes, run by :meth:`~serving.inference.Inference.execute` (so
batching, admission, deadlines, priority, load reports, error codes and
metrics are the msgpack path's own).

Versions: OIP's ``""`` is the latest loaded version, any other string a
loaded version's number. A model's ``platform`` names its backend as KServe
and Triton do (``tensorflow_savedmodel``, ``pytorch_libtorch``, ``python``).
"""

from __future__ import annotations

import time
from importlib import metadata as _metadata
from typing import Any

from protocol import oip
from protocol.oip.infer import InferRequest, parse_version
from protocol.oip.tensors import datatype_of
from protocol.tensor import WireError
from serving.backends import detect_platform
from serving.backends.signature import TensorSpec
from serving.errors import InvalidInput, ModelNotFound, ServingError
from serving.inference import Call
from serving.repository import LoadedModels, LoadedVersion, VersionState

__all__ = ["SERVER_NAME", "infer_call", "lookup", "model_metadata", "model_ready", "server_metadata", "version_of"]

SERVER_NAME = "wei-serve"
PLATFORMS = {"tensorflow": "tensorflow_savedmodel", "pytorch": "pytorch_libtorch", "python": "python"}


def server_metadata() -> dict[str, Any]:
    try:
        version = _metadata.version("weiserving")
    except _metadata.PackageNotFoundError:
        version = "unknown"
    return {"name": SERVER_NAME, "version": version, "extensions": list(oip.EXTENSIONS)}


def version_of(text: str) -> int | None:
    """An OIP version string as ours (None: the latest); a malformed one is the caller's mistake."""
    try:
        return parse_version(text)
    except WireError as exc:
        raise InvalidInput(str(exc)) from None


def lookup(snap: LoadedModels, name: str, version: int | None) -> LoadedVersion:
    """The loaded version (None: the latest), or ModelNotFound naming what is loaded."""
    versions = snap.get(name)
    if not versions:
        raise ModelNotFound(f"model {name!r} is not loaded; loaded models: {sorted(snap)}")
    lv = versions.get(max(versions) if version is None else version)
    if lv is None:
        raise ModelNotFound(f"model {name!r} has no loaded version {version}; loaded versions: {sorted(versions)}")
    return lv


def model_ready(snap: LoadedModels, name: str, version: int | None) -> bool:
    """Loaded and taking calls; an unknown model or version is simply not ready."""
    try:
        return lookup(snap, name, version).state is VersionState.AVAILABLE
    except ModelNotFound:
        return False


def _tensor(name: str, spec: TensorSpec) -> dict[str, Any]:
    return {"name": name, "datatype": datatype_of(spec.dtype), "shape": [-1 if d is None else d for d in spec.shape]}


def model_metadata(snap: LoadedModels, name: str, version: int | None) -> dict[str, Any]:
    """The OIP model metadata (the REST JSON; the gRPC message has the same fields)."""
    lv = lookup(snap, name, version)
    platform = lv.config.platform
    if platform == "auto":
        try:
            platform = detect_platform(lv.path)
        except ServingError:   # the directory changed under a loaded version: it still serves
            platform = "unknown"
    sig = lv.signature
    return {"name": name, "versions": [str(v) for v in sorted(snap[name])],
            "platform": PLATFORMS.get(platform, platform),
            "inputs": [_tensor(n, s) for n, s in sig.inputs.items()],
            "outputs": [_tensor(n, s) for n, s in sig.outputs.items()]}


def infer_call(req: InferRequest, deadline: float | None, priority: str) -> Call:
    """An OIP infer request as the call every protocol makes; Triton's ``timeout`` parameter,
    when sent, bounds it beside the transport's deadline."""
    if req.timeout_s is not None:
        bound = time.monotonic() + req.timeout_s
        deadline = bound if deadline is None else min(deadline, bound)
    return Call(targets={req.model: req.version}, inputs=req.inputs, outputs=req.outputs, deadline=deadline,
                priority=priority)
