"""``wei-registry top``: the real command against a real ZooKeeper (a chroot per test): one snapshot
with ``--once``, one line per change when piped, a live table on a terminal (a pty), and the pure diffs."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import pytest
from kazoo.client import KazooClient
from registry_cli_helpers import Lines

from registry.cli_top import config_changes, member_changes, member_rows
from registry.membership import MembershipSnapshot
from registry.publisher import Publisher
from registry.records import Capacity, InstanceRecord, State
from registry.service_config import BalancerSpec, ConfigStore, ServiceConfig
from registry.zk import ZkSettings

TIMEOUT = 60
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("WEI_ZK")}
    e.update(COLUMNS="200", **extra)
    return e


def command(settings: ZkSettings | str, *args: str) -> list[str]:
    hosts = settings if isinstance(settings, str) else settings.hosts
    return [sys.executable, "-m", "registry.cli", "--zk", hosts, *args]


def record(id: str, **kw: object) -> InstanceRecord:
    port = kw.pop("port", 8500)
    return InstanceRecord(service="ctr", id=id, address="10.0.0.7", port=port, **kw)  # type: ignore[arg-type]


@pytest.fixture
def publish(zk: KazooClient) -> Iterator[Callable[[InstanceRecord], Publisher]]:
    with ExitStack() as stack:
        def register(rec: InstanceRecord) -> Publisher:
            pub = Publisher(zk, rec)
            assert pub.register(timeout=10)
            stack.callback(pub.close)
            return pub
        yield register


def cells(line: str) -> list[str]:
    return re.split(r" {2,}", line.strip())


# -- --once ----------------------------------------------------------------------------

def test_once_prints_members_capacity_split_and_exits(zk, zk_settings, publish):
    publish(record("a", weight=2.0, zone="z1", models={"ctr": [12]}, capacity=Capacity(samples_per_s=41000.0)))
    publish(record("b", port=8501, weight=16.5, state=State.SERVING, models={"ctr": [12, 13]}))
    ConfigStore(zk).set_split("ctr", "ctr", {12: 90.0, 13: 10.0})
    result = subprocess.run(command(zk_settings, "top", "ctr", "--once"), capture_output=True, text=True,
                            env=env(), timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ctr · 2 members, 2 routable, 0 rejected · version ") and "live" in lines[0]
    assert cells(lines[1]) == ["ID", "ADDRESS", "WEIGHT", "CAPACITY/S", "STATE", "ZONE", "MODELS", "AGE"]
    rows = {c[0]: c for c in map(cells, lines[2:4])}
    assert rows["a"][1:7] == ["10.0.0.7:8500", "2", "41000", "WARMING", "z1", "ctr:12"]
    assert rows["b"][1:7] == ["10.0.0.7:8501", "16.5", "-", "SERVING", "-", "ctr:12,13"]
    assert re.fullmatch(r"\d+s", rows["a"][7])
    assert "split ctr: 12=90 13=10" in lines
    assert any(line.startswith("balancer ") for line in lines)


def test_unreachable_zookeeper_is_one_error_line():
    result = subprocess.run(command("127.0.0.1:1", "--timeout", "1", "top", "ctr", "--once"), capture_output=True,
                            text=True, env=env(), timeout=TIMEOUT)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == ["wei-registry: error: cannot reach ZooKeeper at 127.0.0.1:1 within 1s"]


def test_unknown_service_is_one_error_line(zk_settings, publish):
    publish(record("a"))
    result = subprocess.run(command(zk_settings, "top", "nope"), capture_output=True, text=True, env=env(),
                            timeout=TIMEOUT)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("wei-registry: error: ") and "'nope'" in line and "known services: ctr" in line


# -- piped: one line per change ----------------------------------------------------------

@contextmanager
def top(settings: ZkSettings) -> Iterator[tuple[subprocess.Popen[str], Lines]]:
    proc = subprocess.Popen(command(settings, "top", "ctr"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env())
    try:
        yield proc, Lines(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=TIMEOUT)


def test_piped_prints_the_snapshot_then_one_line_per_change(zk, zk_settings, publish):
    pub = publish(record("a", weight=2.0, models={"ctr": [12]}))
    with top(zk_settings) as (proc, lines):
        lines.wait_for(r"ctr · 1 members, 1 routable, .*")
        lines.wait_for(rf"{STAMP}  watching ctr: one line per change \(Ctrl-C ends\)")
        pub.update(weight=7.0, state=State.SERVING, timeout=10)
        lines.wait_for(rf"{STAMP}  a  weight 2 -> 7")
        lines.wait_for(rf"{STAMP}  a  state WARMING -> SERVING")
        publish(record("b", port=8501, weight=0.5, zone="z2", models={"ctr": [13]}))
        lines.wait_for(rf"{STAMP}  b  joined: 10.0.0.7:8501 weight 0.5 WARMING zone z2 models ctr:13")
        ConfigStore(zk).set_split("ctr", "ctr", {12: 50.0, 13: 50.0})
        lines.wait_for(rf"{STAMP}  split ctr  none -> 12=50 13=50")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=TIMEOUT) == 0
        assert proc.stderr is not None and proc.stderr.read() == ""


# -- on a terminal: a live table ----------------------------------------------------------

def test_on_a_terminal_it_draws_a_live_table_and_ends_on_ctrl_c(zk_settings, publish):
    pub = publish(record("pod-a", weight=2.0))
    master, slave = pty.openpty()
    proc = subprocess.Popen(command(zk_settings, "top", "ctr"), stdin=slave, stdout=slave, stderr=slave,
                            env=env(TERM="xterm-256color", LINES="40"), close_fds=True)
    os.close(slave)
    screen = ""

    def read_until(needle: str, timeout: float = 30.0) -> None:
        nonlocal screen
        deadline = time.monotonic() + timeout
        while needle not in screen:
            left = deadline - time.monotonic()
            assert left > 0, f"{needle!r} not drawn; screen:\n{screen}"
            if select.select([master], [], [], left)[0]:
                screen += os.read(master, 65536).decode("utf-8", "replace")

    try:
        read_until("pod-a")  # the title line names it first ("resync: added pod-a")
        read_until("│ pod-a")  # then the table's row: a rich box, not plain columns
        pub.update(weight=7.0, timeout=10)
        read_until("pod-a  weight 2 -> 7")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=TIMEOUT) == 0
        assert "Traceback" not in screen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
        os.close(master)


# -- the pure diffs --------------------------------------------------------------------------

def snap(version: int, *recs: InstanceRecord, stale_since: float | None = None) -> MembershipSnapshot:
    return MembershipSnapshot(service="ctr", version=version, instances={r.id: r for r in recs},
                              stale_since=stale_since, reason="ZooKeeper suspended; serving last good snapshot")


def test_member_changes_name_who_and_what():
    a, b = record("a", weight=2.0), record("b", port=8501)
    old = snap(1, a, b)
    new = snap(2, a.with_changes(weight=3.5, enabled=False, models={"ctr": [13]}),
               record("c", port=8502, zone="z2", capacity=Capacity(samples_per_s=2.5)), stale_since=10.0)
    assert member_changes(None, old) == []
    assert member_changes(old, new) == [
        "registry  STALE: ZooKeeper suspended; serving last good snapshot",
        "b  left",
        "c  joined: 10.0.0.7:8502 weight 1 WARMING zone z2 models -",
        "a  weight 2 -> 3.5",
        "a  enabled yes -> no",
        "a  models - -> ctr:13",
    ]
    assert member_changes(new, snap(3, *new.instances.values())) == ["registry  live again"]
    rows = {r[0]: r for r in member_rows(new, now=new.instances["c"].registration_time_ms / 1000 + 75)}
    assert rows["c"][3] == "2.5" and rows["c"][7] == "1m15s" and rows["a"][4] == "WARMING (disabled)"


def test_config_changes_name_splits_and_policy():
    old = ServiceConfig(splits={"ctr": {12: 100.0}})
    new = ServiceConfig(splits={"ctr": {12: 90.0, 13: 10.0}, "dnn": {1: 100.0}},
                        balancer=BalancerSpec(policy="least_outstanding"))
    assert config_changes(None, new) == []
    assert config_changes(old, old) == []
    changes = config_changes(old, new)
    assert changes[:2] == ["split ctr  12=100 -> 12=90 13=10", "split dnn  none -> 1=100"]
    assert changes[2].startswith("policy  ") and changes[2].endswith(" -> least_outstanding")
