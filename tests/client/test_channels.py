"""Channel pools: the close grace (fake clock) and the asyncio pool reaped on its own loop (real servers)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
import numpy as np
import pytest

from weiclient import ClientConfig, WeiClient
from weiclient.channels import ChannelPool
from weiclient.config import ChannelConfig

GRACE = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def closed(conn) -> bool:
    try:
        conn.predict(b"", timeout=0.01)
    except ValueError as e:  # raised before any I/O on a closed channel
        return "closed" in str(e)
    except grpc.RpcError:
        return False
    return False


@pytest.fixture
def pool():
    clock = Clock()
    p = ChannelPool(ChannelConfig(close_grace_s=GRACE), clock=clock)
    p.clock = clock  # type: ignore[attr-defined]
    yield p
    p.close()


def test_a_departed_channel_is_closed_after_the_grace_and_not_before(pool):
    a, b = pool.get("127.0.0.1:1"), pool.get("127.0.0.1:2")
    pool.retain(["127.0.0.1:1"])
    pool.clock.now += GRACE / 2
    pool.retain(["127.0.0.1:1"])  # still gone: the departure keeps its first time
    assert pool.reap() == 0 and not closed(b)
    pool.clock.now += GRACE / 2
    assert pool.reap() == 1 and closed(b) and not closed(a)
    assert pool.addresses == ["127.0.0.1:1"]


def test_a_pod_that_comes_back_keeps_its_channel(pool):
    b = pool.get("127.0.0.1:2")
    pool.retain([])
    pool.clock.now += GRACE / 2
    pool.retain(["127.0.0.1:2"])  # back within the grace
    pool.clock.now += 2 * GRACE
    assert pool.reap() == 0 and pool.get("127.0.0.1:2") is b
    pool.retain([])
    pool.clock.now += 2 * GRACE
    pool.retain(["127.0.0.1:2"])  # back after the grace ran out, before the housekeeper reaped
    assert pool.reap() == 0 and pool.get("127.0.0.1:2") is b and not closed(b)


def test_a_channel_expired_inside_the_cache_is_still_closed(pool):
    """cachetools expires items on insert too; the pool must not drop those unclosed."""
    pool.get("127.0.0.1:1")
    b, c = pool.get("127.0.0.1:2"), pool.get("127.0.0.1:3")
    pool.retain(["127.0.0.1:1", "127.0.0.1:3"])
    pool.clock.now += GRACE + 1
    pool.retain(["127.0.0.1:1"])  # c departs; inserting it expires b inside the TTLCache
    assert pool.reap() == 1 and closed(b) and not closed(c)
    pool.clock.now += GRACE
    assert pool.reap() == 1 and closed(c) and pool.addresses == ["127.0.0.1:1"]


# -- asyncio channels, reaped by the client's housekeeping thread on their loop --------------------------

def x(rows: int) -> np.ndarray:
    return np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` while the loop runs (the channel is closed on this loop)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_asyncio_channels_of_a_departed_pod_are_closed_on_their_loop(cluster, zk_settings):
    pods = [cluster.add(), cluster.add()]
    client = WeiClient(zk_settings.hosts, "ctr", config=ClientConfig(
        balancer="round_robin", channel=ChannelConfig(close_grace_s=0.2)))
    try:
        client._watcher.wait_for(lambda s: len(s.routable()) == 2)
        gone = f"127.0.0.1:{pods[1].server.port}"

        async def main() -> None:
            served = {int((await client.apredict("ctr", {"x": x(1)}))["who"][0]) for _ in range(4)}
            assert served == {0, 1}
            pool = client._transport.aio_pool
            assert pool is not None and pool.loop is asyncio.get_running_loop()
            conn = pool.get(gone)
            pods[1].publisher.deregister()
            await eventually(lambda: gone not in pool.addresses)
            await eventually(lambda: conn.channel.get_state() is grpc.ChannelConnectivity.SHUTDOWN)
            assert {int((await client.apredict("ctr", {"x": x(1)}))["who"][0]) for _ in range(4)} == {0}
            await client.aclose()

        asyncio.run(main())
    finally:
        client.close()
