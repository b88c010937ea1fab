"""Helpers for the serving tests (a unique module name: tests/ has several conftest.py)."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np

from protocol import wire
from serving.config import BatchingConfig, ModelConfig, ServerConfig
from serving.server import ModelServer

REPO = Path(__file__).resolve().parents[2]

AFFINE_MODEL = '''
import threading
import numpy as np
from serving.backends.signature import Signature, spec

class Affine:
    """y = x * SCALE + 1; ``gate`` (set by default) lets a test hold a batch."""
    signature = Signature(inputs={"x": spec("<f4", [None, 3])},
                          outputs={"y": spec("<f4", [None, 3]), "n": spec("<i8", [None])})

    def __init__(self):
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.calls = []

    def predict(self, inputs):
        self.calls.append(inputs["x"].copy())
        self.entered.set()
        self.gate.wait()
        x = inputs["x"]
        return {"y": x * SCALE + 1, "n": np.full(len(x), len(x), np.int64)}

def load(path):
    return Affine()
'''


def write_python_model(root: Path, name: str, version: int, *, scale: float = 2.0,
                       source: str | None = None) -> Path:
    path = root / name / str(version)
    path.mkdir(parents=True, exist_ok=True)
    text = source if source is not None else f"SCALE = {scale!r}\n" + AFFINE_MODEL
    (path / "model.py").write_text(textwrap.dedent(text))
    return path


TEXT_MODEL = '''
import numpy as np
from serving.backends.signature import Signature, spec

class Text:
    signature = Signature(inputs={"s": spec("|S1", [None])},
                          outputs={"up": spec("|S1", [None]), "len": spec("<i4", [None])})

    def predict(self, inputs):
        s = inputs["s"]
        return {"up": np.char.upper(s), "len": np.char.str_len(s).astype(np.int32)}

def load(path):
    return Text()
'''

def oip_repo(root: Path) -> Path:
    """The OIP tests' models: ``affine`` (float32 [N, 3]) and ``text`` (bytes in, bytes and lengths out)."""
    write_python_model(root, "affine", 1)
    write_python_model(root, "text", 1, source=TEXT_MODEL)
    return root


def server_config(models_dir: Path, **batching) -> ServerConfig:
    batching.setdefault("num_batch_threads", 2)
    return ServerConfig(models_dir=models_dir, host="127.0.0.1", port=0, status_port=0,
                        poll_interval_s=3600, grace_s=5,
                        defaults=ModelConfig(batching=BatchingConfig(**batching)))


@contextmanager
def running(config: ServerConfig) -> Iterator[ModelServer]:
    server = ModelServer(config).start()
    try:
        yield server
    finally:
        server.stop()


class Client:
    """A bare protocol client over a real channel (the SDK issue builds the real one)."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self._predict = self.channel.unary_unary(wire.PREDICT_METHOD)
        self._metadata = self.channel.unary_unary(wire.METADATA_METHOD)

    def raw(self, body: bytes, timeout: float = 30) -> tuple[bytes, grpc.Call]:
        return self._predict.with_call(body, timeout=timeout)

    def predict(self, timeout: float = 30, **kw) -> wire.PredictResponse:
        body, _ = self.raw(wire.encode_request(wire.PredictRequest(**kw)), timeout)
        return wire.decode_response(body)

    def metadata(self, model: str | None = None) -> dict:
        return wire.decode_metadata_response(
            self._metadata(wire.encode_metadata_request(model), timeout=30))

    def close(self) -> None:
        self.channel.close()


def x(rows: int, start: float = 0.0) -> np.ndarray:
    return (np.arange(rows * 3, dtype=np.float32) + start).reshape(rows, 3)


def load_report(call: grpc.Call) -> wire.LoadReport:
    report = wire.load_report_from_metadata(call.trailing_metadata())
    assert report is not None, f"no load report in {call.trailing_metadata()}"
    return report
