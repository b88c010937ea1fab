"""A small real cluster for the SDK tests: model servers on port 0, registered in ZooKeeper."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from registry.publisher import Publisher
from registry.records import InstanceRecord, Protocol, State
from serving.config import BatchingConfig, ModelConfig, ServerConfig, VersionPolicy
from serving.server import ModelServer

MODEL = '''
import time
import numpy as np
from serving.backends.signature import Signature, spec

SERVER, VERSION, DELAY_S = {server}, {version}, {delay}

class Ident:
    """y = 2x + 1, plus which server and version answered."""
    signature = Signature(inputs={{"x": spec("<f4", [None, 3])}},
                          outputs={{"y": spec("<f4", [None, 3]), "who": spec("<i8", [None]),
                                   "ver": spec("<i8", [None])}})

    def predict(self, inputs):
        if DELAY_S:
            time.sleep(DELAY_S)
        x = inputs["x"]
        n = len(x)
        return {{"y": x * 2 + 1, "who": np.full(n, SERVER, np.int64), "ver": np.full(n, VERSION, np.int64)}}

def load(path):
    return Ident()
'''


class Pod:
    def __init__(self, index: int, server: ModelServer, publisher: Publisher) -> None:
        self.index = index
        self.server = server
        self.publisher = publisher

    def kill(self) -> None:
        """The process dies; its ZooKeeper node lingers until the session times out."""
        self.server.stop(0)


class Cluster:
    def __init__(self, zk, root: Path, service: str = "ctr") -> None:
        self.zk = zk
        self.root = root
        self.service = service
        self.pods: list[Pod] = []

    def add(self, *, weight: float = 1.0, versions: tuple[int, ...] = (1,), models=("ctr", "ctr_b"),
            delay_s: float = 0.0, protocol: Protocol = Protocol.WEISERVING) -> Pod:
        """A wei-serve on port 0; ``protocol``: what its record says the port speaks (it speaks both)."""
        i = len(self.pods)
        models_dir = self.root / f"pod{i}"
        for model in models:
            for v in versions:
                path = models_dir / model / str(v)
                path.mkdir(parents=True)
                (path / "model.py").write_text(textwrap.dedent(MODEL.format(server=i, version=v, delay=delay_s)))
        config = ServerConfig(
            models_dir=models_dir, host="127.0.0.1", port=0, status_port=None, poll_interval_s=3600, grace_s=2,
            defaults=ModelConfig(version_policy=VersionPolicy(kind="all"),
                                 batching=BatchingConfig(num_batch_threads=2, batch_timeout_micros=0)))
        server = ModelServer(config).start()
        pub = Publisher(self.zk, InstanceRecord(
            service=self.service, id=f"pod-{i}", address="127.0.0.1", port=server.port, weight=weight,
            state=State.SERVING, models={m: list(versions) for m in models}, protocol=protocol))
        assert pub.register()
        pod = Pod(i, server, pub)
        self.pods.append(pod)
        return pod

    def close(self) -> None:
        for pod in self.pods:
            pod.publisher.close(deregister=False)
            pod.server.stop(0)


@pytest.fixture
def cluster(zk, tmp_path):
    c = Cluster(zk, tmp_path)
    yield c
    c.close()


@pytest.fixture
def cluster_cls():
    return Cluster
