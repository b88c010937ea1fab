"""The client tests' ``Ident`` model (tests/client/conftest.py) as an MLServer runtime, numpy only.

It runs inside MLServer's own virtualenv (.venv-mlserver), never in ours: pytest does not collect
it, and it imports nothing of WeiServing. Its contract is the one wei-serve's ``Ident`` keeps, so a
WeiClient call gets the same outputs from either kind of pod:

- input ``x``: FP32 [N, 3]; anything else is refused with ``InferenceError`` (gRPC INVALID_ARGUMENT,
  as wei-serve refuses it);
- outputs ``y = x * 2 + 1`` (FP32 [N, 3], the same float32 expression, so bit-identical), ``who``
  (INT64 [N], the pod's index, ``parameters.extra.who``) and ``ver`` (INT64 [N], the model version);
- ``outputs`` in the request selects among them (none: all three), an unknown name is refused;
- ``parameters.extra.delay_s`` delays each call (``asyncio.sleep``: unlike wei-serve's blocking sleep,
  it holds no worker, and MLServer's one event loop keeps answering health checks meanwhile).

Outputs are built by hand, not with ``NumpyCodec``, which would reshape 1-D ``who`` to [N, 1].
"""

from __future__ import annotations

import asyncio

import numpy as np
from mlserver import MLModel
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse, RequestInput, ResponseOutput

OUTPUTS = ("y", "who", "ver")


def _x(inputs: list[RequestInput]) -> np.ndarray:
    if [i.name for i in inputs] != ["x"]:
        raise InferenceError(f"expected one input 'x', got {[i.name for i in inputs]}")
    (x,) = inputs
    if x.datatype != "FP32" or len(x.shape) != 2 or x.shape[1] != 3:
        raise InferenceError(f"input 'x' is {x.datatype}{list(x.shape)} but the model takes FP32[-1, 3]")
    data = getattr(x.data, "root", x.data)
    return np.asarray(data, dtype=np.float32).reshape(x.shape)


def _output(name: str, arr: np.ndarray) -> ResponseOutput:
    datatype = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}[arr.dtype]
    return ResponseOutput(name=name, shape=list(arr.shape), datatype=datatype, data=arr.ravel().tolist())


class IdentRuntime(MLModel):
    async def load(self) -> bool:
        params = self.settings.parameters
        extra = (params.extra if params else None) or {}
        self._who = int(extra.get("who", 0))
        self._delay_s = float(extra.get("delay_s", 0.0))
        self._ver = int(self.version or 0)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = _x(payload.inputs)
        wanted = [o.name for o in payload.outputs or ()] or list(OUTPUTS)
        unknown = sorted(set(wanted) - set(OUTPUTS))
        if unknown:
            raise InferenceError(f"unknown outputs {unknown}; the model has {list(OUTPUTS)}")
        if self._delay_s:
            await asyncio.sleep(self._delay_s)
        n = len(x)
        values = {"y": x * 2 + 1, "who": np.full(n, self._who, np.int64), "ver": np.full(n, self._ver, np.int64)}
        return InferenceResponse(model_name=self.name, model_version=self.version,
                                 outputs=[_output(name, values[name]) for name in wanted])
