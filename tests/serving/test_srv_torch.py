"""PyTorch backend: TorchScript and nn.Module factory, on the CPU here (skipped without torch)."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from serving_helpers import running, server_config

from serving.backends import load_backend
from serving.backends.signature import Signature, spec
from serving.batching import Batcher
from serving.config import BatchingConfig, ModelConfig

torch = pytest.importorskip("torch", reason="torch is optional and not installed "
                            "(pip install torch to run the PyTorch backend tests)")

SIG = Signature(inputs={"dense": spec("<f4", [None, 13])}, outputs={"score": spec("<f4", [None])})


class Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(13, 16), torch.nn.ReLU(),
                                       torch.nn.Linear(16, 1))

    def forward(self, dense):
        return torch.sigmoid(self.net(dense)).squeeze(1)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_version_dir_loads_and_batches(tmp_path):
    module = Mlp().eval()
    path = tmp_path / "m" / "1"
    path.mkdir(parents=True)
    torch.jit.save(torch.jit.script(module), str(path / "model.pt"))
    (path / "signature.json").write_text(json.dumps(SIG.to_wire()))
    backend = load_backend(path)
    assert backend.signature == SIG and backend.device.type in ("cpu", "cuda")
    x = np.random.default_rng(0).normal(size=(37, 13)).astype(np.float32)
    x.setflags(write=False)                          # as a request tensor arrives
    with torch.inference_mode():
        expected = module(torch.from_numpy(x.copy())).numpy()
    batcher = Batcher(backend, BatchingConfig(max_batch_size=8, num_batch_threads=2))
    try:
        np.testing.assert_allclose(batcher.submit({"dense": x}, 37).result(30)["score"],
                                   expected, rtol=1e-5, atol=1e-6)
    finally:
        batcher.close()


def test_module_factory_served_over_grpc(tmp_path, client_for):
    from dataclasses import replace
    path = tmp_path / "mlp" / "1"
    path.mkdir(parents=True)
    (path / "model.py").write_text(textwrap.dedent('''
        import torch
        from serving.backends.signature import Signature, spec
        SIGNATURE = Signature(inputs={"a": spec("<f4", [None, 2]), "b": spec("<i8", [None])},
                              outputs={"sum": spec("<f4", [None]), "b2": spec("<i8", [None])})
        class M(torch.nn.Module):
            def forward(self, a, b):
                return a.sum(1) + b.float(), b * 2
        def build(path):
            return M()
    '''))
    cfg = server_config(tmp_path)
    cfg = replace(cfg, models={"mlp": ModelConfig(platform="pytorch")})
    with running(cfg) as server:
        out = client_for(server).predict(model="mlp", inputs={
            "a": np.ones((3, 2), np.float32), "b": np.arange(3)}).outputs()
        np.testing.assert_array_equal(out["sum"], [2, 3, 4])
        np.testing.assert_array_equal(out["b2"], [0, 2, 4])
