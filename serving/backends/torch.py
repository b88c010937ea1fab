"""PyTorch backend (optional): TorchScript files or an ``nn.Module`` factory.

torch is imported lazily, so the server runs without it. A version directory
holds either

- ``model.pt`` (TorchScript, ``torch.jit.save``) and ``signature.json``
  (``{"inputs": {"x": {"dtype": "<f4", "shape": [-1, 13]}}, "outputs": {...}}``,
  the Metadata format), or
- ``model.py`` (with ``platform = "pytorch"`` in the config) defining
  ``SIGNATURE`` (a :class:`Signature`) and ``build(path) -> torch.nn.Module``.

The module's ``forward`` takes the inputs positionally in signature order and
returns a tensor (the single output), a tuple (outputs in signature order) or
a dict. It runs under ``torch.inference_mode()`` on CUDA when available (or
the ``device`` given), so on GPU pods the batcher keeps the device fed with
large batches while the next batch is assembled on another batch thread.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from serving.backends.signature import Signature
from serving.errors import ModelLoadError


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ModelLoadError("the PyTorch backend needs torch (pip install torch)") from None
    return torch


class TorchBackend:
    def __init__(self, module: Any, signature: Signature, *, device: str | None = None) -> None:
        torch = _torch()
        self._torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._module = module.to(self.device).eval()
        self.signature = signature
        self._inputs = list(signature.inputs)
        self._outputs = list(signature.outputs)

    @classmethod
    def load(cls, path: Path, *, device: str | None = None) -> TorchBackend:
        torch = _torch()
        if (path / "model.pt").is_file():
            sig_file = path / "signature.json"
            if not sig_file.is_file():
                raise ModelLoadError(f"{path}: model.pt needs a signature.json beside it")
            signature = Signature.from_wire(json.loads(sig_file.read_text()))
            return cls(torch.jit.load(str(path / "model.pt"), map_location="cpu"), signature,
                       device=device)
        from serving.backends.python import import_model_module
        module = import_model_module(path)
        if not isinstance(getattr(module, "SIGNATURE", None), Signature) or \
                not callable(getattr(module, "build", None)):
            raise ModelLoadError(f"{path}/model.py must define SIGNATURE (a Signature) and "
                                 f"build(path) -> torch.nn.Module")
        return cls(module.build(path), module.SIGNATURE, device=device)

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            # from_numpy needs a writable array; request views are read-only, so copy those
            args = [torch.from_numpy(np.require(inputs[n], requirements=["C", "W"]))
                    .to(self.device, non_blocking=True) for n in self._inputs]
            out = self._module(*args)
            if isinstance(out, torch.Tensor):
                out = {self._outputs[0]: out}
            elif isinstance(out, (tuple, list)):
                out = dict(zip(self._outputs, out, strict=True))
            return {k: v.detach().to("cpu").numpy() for k, v in out.items()}

    def close(self) -> None:
        self._module = None
        if self.device.type == "cuda":
            self._torch.cuda.empty_cache()
