"""``wei-registry`` end to end: the CLI as a subprocess against a real ZooKeeper (a chroot per test)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import pytest
from kazoo.client import KazooClient
from registry_cli_helpers import Lines

from registry.cli import human_age, parse_split, snapshot_header
from registry.membership import MembershipSnapshot
from registry.publisher import Publisher
from registry.records import InstanceRecord, State
from registry.service_config import ConfigStore
from registry.zk import RegistryPaths, ZkSettings

PATHS = RegistryPaths()
TIMEOUT = 60


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("WEI_ZK")}
    e.update(COLUMNS="200", **extra)
    return e


def cli(settings: ZkSettings | None, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    zk = ["--zk", settings.hosts] if settings else []
    return subprocess.run([sys.executable, "-m", "registry.cli", *zk, *args], capture_output=True,
                          text=True, env=env(**extra_env), timeout=TIMEOUT)


def table_rows(stdout: str) -> list[list[str]]:
    """The cells of each table body row (piped, tables are plain columns two spaces apart)."""
    found, width = [], 0
    for line in stdout.splitlines():
        cells = re.split(r" {2,}", line.strip())
        if line.startswith(("ID ", "MODEL ")):
            width = len(cells)
        elif width and len(cells) == width:
            found.append(cells)
        else:
            width = 0
    return found


def rows(stdout: str) -> dict[str, list[str]]:
    """Table body rows keyed by their first cell (the instance id)."""
    return {cells[0]: cells for cells in table_rows(stdout)}


def assert_one_error_line(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("wei-registry: error: ")
    for f in fragments:
        assert f in lines[0]
    return lines[0]


def record(id: str, **kw: object) -> InstanceRecord:
    service, port = kw.pop("service", "ctr"), kw.pop("port", 8500)
    return InstanceRecord(service=service, id=id, address="10.0.0.7", port=port, **kw)  # type: ignore[arg-type]


@pytest.fixture
def publish(zk: KazooClient) -> Iterator[Callable[[InstanceRecord], Publisher]]:
    with ExitStack() as stack:
        def register(rec: InstanceRecord) -> Publisher:
            pub = Publisher(zk, rec)
            assert pub.register(timeout=10)
            stack.callback(pub.close)
            return pub
        yield register


# -- ls ----------------------------------------------------------------------------

def test_ls_shows_members_with_weight_state_and_models(zk_settings, publish):
    publish(record("a", weight=2.0, zone="z1"))
    publish(record("b", port=8501, weight=16.5, state=State.SERVING, models={"ctr": [13, 12], "dnn": [1]}))
    publish(record("c", port=8502, weight=0.0, state=State.DRAINING, enabled=False))
    result = cli(zk_settings, "ls", "ctr")
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    assert table["a"][1:5] == ["10.0.0.7:8500", "2", "WARMING", "yes"]
    assert table["a"][6] == "z1"
    assert table["b"][1:6] == ["10.0.0.7:8501", "16.5", "SERVING", "yes", "ctr:12,13 dnn:1"]
    assert table["c"][2:5] == ["0", "DRAINING", "no"]
    assert table["a"][7].endswith("s")  # an age like "0s" or "1m02s"
    assert "3 members, 2 routable, 0 rejected" in result.stdout


def test_ls_reports_a_garbage_node_and_lists_the_rest(zk, zk_settings, publish):
    publish(record("a", weight=3.0))
    zk.create(f"{PATHS.service('ctr')}/junk", bytes(range(256)) * 4)
    zk.create(f"{PATHS.service('ctr')}/imposter", b'{"name":"ctr","id":"other"}')
    result = cli(zk_settings, "ls", "ctr")
    assert result.returncode == 0, result.stderr
    assert set(rows(result.stdout)) == {"a"}
    assert "1 members, 1 routable, 2 rejected" in result.stdout
    assert "rejected junk: record: expected UTF-8 JSON" in result.stdout
    assert "rejected imposter: payload" in result.stdout


def test_ls_json_prints_curator_instances(zk, zk_settings, publish):
    publish(record("a", weight=4.0, models={"ctr": [12]}))
    zk.create(f"{PATHS.service('ctr')}/junk", b"\x00garbage")
    result = cli(zk_settings, "ls", "ctr", "--json")
    assert result.returncode == 0, result.stderr
    instances = json.loads(result.stdout)
    assert [i["id"] for i in instances] == ["a"]
    a = instances[0]
    assert list(a) == ["name", "id", "address", "port", "sslPort", "payload", "registrationTimeUTC",
                       "serviceType", "uriSpec", "enabled"]
    assert a["payload"]["@class"] == "java.util.LinkedHashMap"
    assert (a["payload"]["weight"], a["payload"]["models"]) == (4.0, {"ctr": [12]})
    assert "skipped node junk" in result.stderr and "Traceback" not in result.stderr


def test_hosts_and_root_come_from_the_environment(zk_settings, make_client):
    other = RegistryPaths("/elsewhere")
    with Publisher(make_client(), record("e", weight=1.0), paths=other):
        result = cli(None, "ls", "ctr", WEI_ZK=zk_settings.hosts, WEI_ZK_ROOT=other.root)
        assert result.returncode == 0, result.stderr
        assert set(rows(result.stdout)) == {"e"}
        # the same service under the default root does not exist
        assert_one_error_line(cli(zk_settings, "ls", "ctr"), 1, "'ctr'")


# -- config and split -----------------------------------------------------------------

def test_split_then_config_shows_it(zk, zk_settings):
    result = cli(zk_settings, "split", "ctr", "ctr", "12=90", "13=10", "--force")  # no pod yet: forced
    assert result.returncode == 0, result.stderr
    assert "split for ctr is now 12=90 13=10" in result.stdout
    stored = ConfigStore(zk).get("ctr")
    assert stored is not None and dict(stored.splits["ctr"]) == {12: 90.0, 13: 10.0}

    shown = cli(zk_settings, "config", "ctr")
    assert shown.returncode == 0, shown.stderr
    assert "balancer p2c_jsed" in shown.stdout
    table = table_rows(shown.stdout)
    assert ["ctr", "12", "90"] in table and ["ctr", "13", "10"] in table

    assert cli(zk_settings, "split", "ctr", "ctr", "13=100", "--force").returncode == 0
    as_json = json.loads(cli(zk_settings, "config", "ctr", "--json").stdout)
    assert as_json["present"] is True
    assert as_json["splits"] == {"ctr": {"13": 100.0}}
    assert as_json["updated_ms"] > 0


def test_split_needs_the_writers_credentials_once_acls_are_set(zk_settings, make_client):
    assert cli(zk_settings, "--auth", "ops:s3cret", "split", "ctr", "ctr", "12=100", "--force").returncode == 0
    try:
        no_auth = cli(zk_settings, "split", "ctr", "ctr", "13=100", "--force")
        assert_one_error_line(no_auth, 1, "not authorised", "--auth")
        assert_one_error_line(cli(zk_settings, "--auth", "ops:wrong", "split", "ctr", "ctr", "13=100",
                                  "--force"), 1, "not authorised")
        shown = cli(zk_settings, "config", "ctr", "--json")  # readers need no credentials
        assert json.loads(shown.stdout)["splits"] == {"ctr": {"12": 100.0}}
    finally:  # the chroot's cleanup has no credentials
        make_client(auth="ops:s3cret").delete(PATHS.root, recursive=True)


def test_config_without_node_shows_defaults(zk_settings, publish):
    publish(record("a"))
    result = cli(zk_settings, "config", "ctr")
    assert result.returncode == 0, result.stderr
    assert "no config node: defaults (p2c_jsed, no splits)" in result.stdout
    as_json = json.loads(cli(zk_settings, "config", "ctr", "--json").stdout)
    assert (as_json["present"], as_json["splits"]) == (False, {})
    assert as_json["balancer"]["policy"] == "p2c_jsed"


def test_config_node_with_garbage_is_one_error_line(zk, zk_settings):
    zk.create(PATHS.config("ctr"), b"{not json", makepath=True)
    assert_one_error_line(cli(zk_settings, "config", "ctr"), 1, "invalid data", "JSON")


@pytest.mark.parametrize(("shares", "says"), [
    (["12=90", "13=20"], "must sum to 100, got 110"),
    (["12=90"], "must sum to 100, got 90"),
    (["12:90", "13=10"], "expected VERSION=SHARE"),
    (["v12=100"], "expected VERSION=SHARE"),
    (["12=lots"], "expected a number"),
    (["12=-10", "13=110"], ">= 0"),
    (["12=50", "12=50"], "given twice"),
])
def test_invalid_split_is_one_line_and_writes_nothing(zk, zk_settings, shares, says):
    assert_one_error_line(cli(zk_settings, "split", "ctr", "ctr", *shares), 2, says)
    assert zk.exists(PATHS.config("ctr")) is None


def test_bad_names_and_missing_arguments_are_usage_errors(zk_settings):
    assert_one_error_line(cli(zk_settings, "split", "ctr", "bad model", "1=100"), 2, "model")
    assert_one_error_line(cli(zk_settings, "ls", "../etc"), 2, "service")
    assert_one_error_line(cli(zk_settings, "split", "ctr"), 2, "required")
    assert_one_error_line(cli(zk_settings, "frobnicate"), 2, "invalid choice")
    assert_one_error_line(cli(None, "--zk", "127.0.0.1:http", "ls", "ctr"), 2, "expected host:port")
    assert_one_error_line(cli(zk_settings, "--root", "relative", "ls", "ctr"), 2, "root")


# -- failures ----------------------------------------------------------------------

def test_unreachable_zookeeper_is_one_line_exit_1():
    result = subprocess.run([sys.executable, "-m", "registry.cli", "--zk", "127.0.0.1:1", "--timeout", "1",
                             "ls", "ctr"], capture_output=True, text=True, env=env(), timeout=TIMEOUT)
    assert_one_error_line(result, 1, "cannot reach ZooKeeper at 127.0.0.1:1 within 1s")


@pytest.mark.parametrize("command", ["ls", "watch", "config"])
def test_unknown_service_names_it_and_the_known_ones(zk_settings, publish, command):
    publish(record("a"))
    publish(record("g", service="gpu-ctr"))
    line = assert_one_error_line(cli(zk_settings, command, "nope"), 1, "'nope'")
    assert "known services: ctr, gpu-ctr" in line


# -- watch -------------------------------------------------------------------------

@contextmanager
def watching(settings: ZkSettings, *args: str) -> Iterator[tuple[subprocess.Popen[str], Lines]]:
    proc = subprocess.Popen([sys.executable, "-m", "registry.cli", "--zk", settings.hosts, "watch", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    try:
        yield proc, Lines(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=TIMEOUT)


def test_watch_prints_each_new_version(zk_settings, publish):
    pub = publish(record("a", weight=2.0))
    with watching(zk_settings, "ctr", "--count", "2") as (proc, lines):
        first = lines.wait_for(lambda s: s.startswith("version "))
        lines.wait_for(lambda s: s.startswith("1 members"))  # the first block is complete
        pub.update(weight=7.0, state=State.SERVING, timeout=10)
        output = lines.rest()
        assert proc.wait(timeout=TIMEOUT) == 0, proc.stderr.read() if proc.stderr else ""
    headers = [s for s in output if s.startswith("version ")]
    assert len(headers) == 2, output
    assert headers[0] == first and "live" in first
    v1, v2 = (int(h.split()[1]) for h in headers)
    assert v2 == v1 + 1 and "updated a" in headers[1]
    a_rows = [r for r in table_rows("\n".join(output)) if r[0] == "a"]
    assert [(r[2], r[3]) for r in a_rows] == [("2", "WARMING"), ("7", "SERVING")]


def test_watch_ends_cleanly_on_ctrl_c(zk_settings, publish):
    publish(record("a"))
    with watching(zk_settings, "ctr") as (proc, lines):
        lines.wait_for(lambda s: s.startswith("1 members"))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=TIMEOUT) == 0
        assert proc.stderr is not None and proc.stderr.read() == ""


def test_watch_duration_ends_an_idle_watch(zk_settings, publish):
    publish(record("a"))
    with watching(zk_settings, "ctr", "--duration", "0.5") as (proc, lines):
        assert proc.wait(timeout=TIMEOUT) == 0
        headers = [s for s in lines.rest() if s.startswith("version ")]
    assert len(headers) == 1 and headers[0].startswith("version 1 · live · ") and "added a" in headers[0]


# -- pure helpers --------------------------------------------------------------------

@pytest.mark.parametrize(("seconds", "shown"), [
    (0, "0s"), (59.9, "59s"), (133, "2m13s"), (3600 + 5 * 60 + 9, "1h05m"), (2 * 86400 + 7200, "2d02h"),
    (-3, "-"), (float("nan"), "-"),
])
def test_human_age(seconds, shown):
    assert human_age(seconds) == shown


def test_snapshot_header_says_version_staleness_and_reason():
    live = MembershipSnapshot(service="ctr", version=4, reason="watch: updated a")
    assert snapshot_header(live, now=100.0) == "version 4 · live · watch: updated a"
    stale = MembershipSnapshot(service="ctr", version=5, stale_since=40.0,
                     reason="ZooKeeper suspended; serving last good snapshot")
    assert snapshot_header(stale, now=100.0) == (
        "version 5 · STALE for 1m00s · ZooKeeper suspended; serving last good snapshot")


def test_parse_split_accepts_decimal_shares():
    assert parse_split(["12=33.5", "13=66.5"]) == {12: 33.5, 13: 66.5}
