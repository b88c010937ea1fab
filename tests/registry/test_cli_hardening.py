"""wei-registry fails well (issue 10, part 8): whole ids when piped or narrow, split refuses an
unhosted version unless --force, config warns of a policy clients do not know."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest
from kazoo.client import KazooClient
from rich.console import Console

from registry import cli_view
from registry.publisher import Publisher
from registry.records import InstanceRecord, State
from registry.service_config import POLICY_NAMES, BalancerSpec, ConfigStore, ServiceConfig
from registry.zk import RegistryPaths, ZkSettings

PATHS = RegistryPaths()
LONG_ID = "java-curator-interop-7f3c9a1e2b4d6f80a1c3e5b7d9f1a3c5"
LONG_ADDRESS = "ip-10-200-113-247.eu-west-1.compute.internal"


def cli(settings: ZkSettings, *args: str, columns: int = 200) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "registry.cli", "--zk", settings.hosts, *args],
                          capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture
def publish(zk: KazooClient) -> Iterator[Callable[..., Publisher]]:
    with ExitStack() as stack:
        def register(id: str, **kw: object) -> Publisher:
            kw.setdefault("address", "10.0.0.7")
            pub = Publisher(zk, InstanceRecord(service="ctr", id=id, port=8500, **kw))  # type: ignore[arg-type]
            assert pub.register(timeout=10)
            stack.callback(pub.close)
            return pub
        yield register


# -- ls: never cut an id or an address ------------------------------------------------

@pytest.mark.parametrize("columns", [200, 40])
def test_ls_piped_prints_whole_ids_and_addresses_in_plain_columns(zk_settings, publish, columns):
    publish(LONG_ID, address=LONG_ADDRESS, weight=2.0, models={"ctr": [12, 13], "dnn": [1]})
    publish("b", weight=1.0)
    result = cli(zk_settings, "ls", "ctr", columns=columns)
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout and "│" not in result.stdout
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "ADDRESS", "WEIGHT", "STATE", "ENABLED", "MODELS", "ZONE", "AGE"]
    mine = [ln for ln in lines if LONG_ID in ln]          # what `| grep POD` finds
    assert len(mine) == 1 and f"{LONG_ADDRESS}:8500" in mine[0] and "ctr:12,13 dnn:1" in mine[0]


def test_a_terminal_too_narrow_for_the_box_gets_plain_columns_too(monkeypatch):
    rows = [(LONG_ID, f"{LONG_ADDRESS}:8500", "2")]
    for width, boxed in ((200, True), (60, False)):
        buf = io.StringIO()
        monkeypatch.setattr(cli_view, "out", Console(file=buf, force_terminal=True, width=width,
                                                     highlight=False, soft_wrap=True))
        cli_view.show_table(("id", "address", "weight"), rows)
        shown = buf.getvalue()
        assert LONG_ID in shown and LONG_ADDRESS in shown and "…" not in shown
        assert ("│" in shown) is boxed, shown


# -- split: refuse a version no pod hosts -----------------------------------------------

def test_split_to_a_version_no_routable_pod_hosts_is_refused_and_writes_nothing(zk, zk_settings, publish):
    publish("a", weight=1.0, models={"ctr": [12]})
    publish("d", weight=1.0, state=State.DRAINING, models={"ctr": [14]})   # draining: not routable
    for shares in (["12=90", "13=10"], ["12=50", "14=50"]):
        result = cli(zk_settings, "split", "ctr", "ctr", *shares)
        assert result.returncode == 2, (result.stdout, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("wei-registry: error: no routable pod"), result.stderr
        assert shares[1].split("=")[0] in lines[0] and "they host versions 12" in lines[0]
        assert "NoEndpointAvailable" in lines[0] and "--force" in lines[0]
    assert zk.exists(PATHS.config("ctr")) is None


def test_split_to_hosted_versions_or_an_unhosted_one_at_zero_or_forced_is_written(zk, zk_settings, publish):
    publish("a", weight=1.0, models={"ctr": [12, 13]})
    assert cli(zk_settings, "split", "ctr", "ctr", "12=90", "13=10").returncode == 0
    assert cli(zk_settings, "split", "ctr", "ctr", "12=100", "14=0").returncode == 0   # 14 gets nothing
    forced = cli(zk_settings, "split", "ctr", "ctr", "12=90", "15=10", "--force")
    assert forced.returncode == 0, forced.stderr
    assert dict(ConfigStore(zk).get("ctr").splits["ctr"]) == {12: 90.0, 15: 10.0}


# -- config: warn of an unknown policy ----------------------------------------------------

def test_config_with_a_policy_clients_do_not_know_warns_and_exits_1(zk, zk_settings):
    ConfigStore(zk).set("ctr", ServiceConfig(balancer=BalancerSpec(policy="weighted_p2cc")))
    for extra in ((), ("--json",)):
        result = cli(zk_settings, "config", "ctr", *extra)
        assert result.returncode == 1, result.stderr
        assert "weighted_p2cc" in result.stdout                  # still shown as stored
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("wei-registry: warning: balancer policy "
                                                       "'weighted_p2cc' is not one clients know")
        assert "p2c_jsed" in lines[0] and "keep the policy they run" in lines[0]
    json.loads(cli(zk_settings, "config", "ctr", "--json").stdout)


def test_config_with_a_known_policy_is_quiet(zk, zk_settings):
    ConfigStore(zk).set("ctr", ServiceConfig(balancer=BalancerSpec(policy="round_robin")))
    result = cli(zk_settings, "config", "ctr")
    assert (result.returncode, result.stderr) == (0, "")


def test_the_registry_knows_the_same_policy_names_as_the_client():
    from weiclient.balancer import POLICIES
    assert sorted(POLICY_NAMES) == sorted(POLICIES)
