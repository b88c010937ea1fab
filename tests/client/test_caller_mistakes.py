"""A caller's mistake never counts against a pod (issue 10, part 3).

Each mistake used to come back as a misleading RESOURCE_EXHAUSTED, was
retried on the other pod and charged to both: six such calls got a healthy
pod ejected. Now each is a clear error that names the limit, raised at once,
with no retry and no failure counted. Real ZooKeeper, real model servers.
"""

from __future__ import annotations

from concurrent import futures
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from client_metrics import counted

from protocol import wire
from registry.publisher import Publisher
from registry.records import InstanceRecord, State
from serving.config import BatchingConfig, ModelConfig, ServerConfig
from serving.server import ModelServer
from weiclient import ClientConfig, WeiClient
from weiclient.config import ChannelConfig
from weiclient.errors import MAX_MESSAGE_CHARS, InvalidInput, RequestTooLarge

MODEL = '''
from serving.backends.signature import Signature, spec

class Affine:
    signature = Signature(inputs={"x": spec("<f4", [None, 3])}, outputs={"y": spec("<f4", [None, 3])})

    def predict(self, inputs):
        return {"y": inputs["x"] * 2 + 1}

def load(path):
    return Affine()
'''
ROW_LIMIT = 8  # max_enqueued_batches 2 x max_batch_size 4
SERVER_MAX_BYTES = 32 * 1024
CLIENT_MAX_BYTES = 64 * 1024
SIX = 6  # more than OutlierDetection.consecutive_failures (5)


def x(rows: int) -> np.ndarray:
    return np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)


def rows_of(nbytes: int) -> int:
    return nbytes // 12 + 1  # 3 float32 a row


class Pods:
    """Model servers with a small row limit and a small message limit, registered as service ctr."""

    def __init__(self, zk, root: Path) -> None:
        self.zk = zk
        self.root = root
        self.servers: list[ModelServer] = []
        self.publishers: list[Publisher] = []
        self.grpc_servers: list[grpc.Server] = []

    def add(self) -> ModelServer:
        i = len(self.servers) + len(self.grpc_servers)
        path = self.root / f"pod{i}" / "ctr" / "1"
        path.mkdir(parents=True)
        (path / "model.py").write_text(MODEL)
        config = ServerConfig(
            models_dir=self.root / f"pod{i}", host="127.0.0.1", port=0, status_port=None, poll_interval_s=3600,
            grace_s=2, max_message_bytes=SERVER_MAX_BYTES,
            defaults=ModelConfig(batching=BatchingConfig(max_batch_size=4, max_enqueued_batches=2)))
        server = ModelServer(config).start()
        self.servers.append(server)
        self.register(i, server.port)
        return server

    def add_raw(self, handler) -> None:
        """A pod that is any gRPC server answering Predict with ``handler(request, context)``."""
        i = len(self.servers) + len(self.grpc_servers)
        server = grpc.server(futures.ThreadPoolExecutor(2))
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(wire.SERVICE, {
            "Predict": grpc.unary_unary_rpc_method_handler(handler)})])
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self.grpc_servers.append(server)
        self.register(i, port)

    def register(self, i: int, port: int) -> None:
        pub = Publisher(self.zk, InstanceRecord(service="ctr", id=f"pod-{i}", address="127.0.0.1", port=port,
                                                weight=1.0, state=State.SERVING, models={"ctr": [1]}))
        assert pub.register()
        self.publishers.append(pub)

    def close(self) -> None:
        for pub in self.publishers:
            pub.close(deregister=False)
        for server in self.servers:
            server.stop(0)
        for raw in self.grpc_servers:
            raw.stop(0)


@pytest.fixture
def pods(zk, tmp_path):
    p = Pods(zk, tmp_path)
    yield p
    p.close()


@pytest.fixture
def client(zk_settings):
    c = WeiClient(zk_settings.hosts, "ctr", config=ClientConfig(
        timeout_s=10.0, channel=ChannelConfig(max_message_bytes=CLIENT_MAX_BYTES)))
    yield c
    c.close()


def assert_no_pod_charged(client: WeiClient) -> None:
    stats = client.stats().balancer
    assert stats.ejected == 0, stats
    assert all(e.consecutive_failures == 0 and e.health == 1.0 for e in stats.endpoints), stats.endpoints
    assert stats.in_flight == 0


def test_six_caller_mistakes_of_each_kind_charge_no_pod_and_are_not_retried(pods, client):
    pods.add()
    pods.add()
    client._watcher.wait_for(lambda s: len(s.routable()) == 2)
    assert client.predict("ctr", {"x": x(2)})["y"].shape == (2, 3)
    retries, attempts = counted("weiclient_retries", client), counted("weiclient_attempts", client)

    for _ in range(SIX):  # over the server's row limit
        with pytest.raises(InvalidInput) as e:
            client.predict("ctr", {"x": x(ROW_LIMIT + 1)})
        assert e.value.code == "INVALID_ARGUMENT"
        assert f"{ROW_LIMIT + 1} rows" in str(e.value) and f"limit of {ROW_LIMIT} rows" in str(e.value)
    assert counted("weiclient_attempts", client) == attempts + SIX  # one attempt each
    assert_no_pod_charged(client)

    for _ in range(SIX):  # over this client's message size: refused before sending
        with pytest.raises(RequestTooLarge) as big:
            client.predict("ctr", {"x": x(rows_of(CLIENT_MAX_BYTES))}, split=False)
        assert big.value.limit == CLIENT_MAX_BYTES and big.value.size > CLIENT_MAX_BYTES
        assert big.value.endpoint is None and "it was not sent" in str(big.value)
        assert f"{CLIENT_MAX_BYTES:,}" in str(big.value)
    assert counted("weiclient_attempts", client) == attempts + SIX  # nothing was sent
    assert_no_pod_charged(client)

    for _ in range(SIX):  # under this client's limit, over the server's: gRPC refuses it there
        with pytest.raises(RequestTooLarge) as srv:
            client.predict("ctr", {"x": x(rows_of(SERVER_MAX_BYTES))})
        assert srv.value.code == "MESSAGE_TOO_LARGE" and srv.value.endpoint is not None
        assert "message larger than max" in str(srv.value) and str(SERVER_MAX_BYTES) in str(srv.value)
    assert_no_pod_charged(client)

    for _ in range(SIX):  # an error text longer than gRPC's 16 KiB metadata limit
        with pytest.raises(InvalidInput) as long:
            client.predict("ctr", {"x": x(1)}, outputs=["o" * 20_000])
        assert "unknown outputs" in str(long.value) and "more characters)" in str(long.value)
    assert_no_pod_charged(client)

    assert counted("weiclient_retries", client) == retries
    assert client.predict("ctr", {"x": x(ROW_LIMIT)})["y"].shape == (ROW_LIMIT, 3)


def test_a_request_too_large_can_be_scattered_instead(pods, zk_settings):
    """The message says split=True; it works: each shard is checked on its own."""
    pods.add()
    pods.add()
    cfg = ClientConfig(channel=ChannelConfig(max_message_bytes=CLIENT_MAX_BYTES),
                       scatter=replace(ClientConfig().scatter, min_shard_rows=4))
    with WeiClient(zk_settings.hosts, "ctr", config=cfg) as client:
        client._watcher.wait_for(lambda s: len(s.routable()) == 2)
        with pytest.raises(RequestTooLarge, match="split=True") as e:
            client.predict("ctr", {"x": x(14)}, outputs=["y" * CLIENT_MAX_BYTES])
        assert e.value.endpoint is None  # refused here, before sending
        out = client.predict("ctr", {"x": x(ROW_LIMIT * 2)}, split=True)  # over one pod's row limit
        np.testing.assert_array_equal(out["y"], x(ROW_LIMIT * 2) * 2 + 1)


def test_a_long_message_from_a_server_that_does_not_cut_it_still_reaches_the_caller(pods, client):
    """Another server (an older one, an OIP server) may send 20 KB of status message: the
    client accepts it (ChannelConfig.max_metadata_bytes) and keeps the first 4,096 characters."""
    text = "model 'ctr': " + "w" * 20_000

    def refuse(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, text)
        raise AssertionError("abort raises")

    pods.add_raw(refuse)
    pods.add_raw(refuse)
    client._watcher.wait_for(lambda s: len(s.routable()) == 2)
    retries = counted("weiclient_retries", client)
    for _ in range(SIX):
        with pytest.raises(InvalidInput) as e:
            client.predict("ctr", {"x": x(1)})
        message = str(e.value)
        assert message.startswith("model 'ctr': www") and "more characters)" in message
        assert len(message) < MAX_MESSAGE_CHARS + 200
    assert counted("weiclient_retries", client) == retries
    assert_no_pod_charged(client)
