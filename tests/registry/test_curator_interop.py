"""Interoperability with a real Apache Curator 5.4 client (Debian's libcurator-discovery-java).

A small Java program (tests/java/CuratorInterop.java) is compiled here with
javac and run against the same ZooKeeper: it reads what Python registered,
payload included, and registers an instance that Python then reads.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

from registry.membership import Protection
from registry.publisher import Publisher
from registry.records import Capacity, InstanceRecord, State
from registry.watcher import MembershipWatcher, WatcherConfig

pytestmark = pytest.mark.java

SOURCE = Path(__file__).parent.parent / "java" / "CuratorInterop.java"
DISCOVERY_JAR = Path("/usr/share/java/curator-x-discovery.jar")
SLF4J_NOP = Path("/usr/share/java/slf4j-nop.jar")


@pytest.fixture(scope="module")
def classpath(tmp_path_factory) -> str:
    if shutil.which("javac") is None or shutil.which("java") is None:
        pytest.skip("no JDK (javac) on this machine: `make deps` installs default-jdk-headless")
    if not DISCOVERY_JAR.exists():
        pytest.skip(f"{DISCOVERY_JAR} missing: `make deps` installs libcurator-discovery-java")
    out = tmp_path_factory.mktemp("java")
    subprocess.run(["javac", "-cp", str(DISCOVERY_JAR), "-d", str(out), str(SOURCE)],
                   check=True, capture_output=True, timeout=120)
    parts = [str(out), str(DISCOVERY_JAR)] + ([str(SLF4J_NOP)] if SLF4J_NOP.exists() else [])
    return ":".join(parts)


def java(classpath, *args, **kw):
    return ["java", "-Xshare:auto", "-XX:TieredStopAtLevel=1", "-cp", classpath, "CuratorInterop", *args]


def test_curator_reads_python_instances(classpath, zk, zk_settings):
    serving = Publisher(zk, InstanceRecord(
        service="ctr", id="py-serving", address="127.0.0.1", port=8500, weight=3.5, state=State.SERVING,
        capacity=Capacity(cpu_cores=16, samples_per_s=9000.0), models={"ctr": [12, 13]}, labels={"zone": "a"}))
    draining = Publisher(zk, InstanceRecord(
        service="ctr", id="py-draining", address="127.0.0.2", port=8501, weight=1.0, models={"ctr": [12]}))
    assert serving.register() and draining.register()
    draining.drain(timeout=10)
    out = subprocess.run(java(classpath, zk_settings.hosts, "/weiserving/services", "read", "ctr"),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {line.split("\t")[0]: line.split("\t") for line in out.stdout.splitlines() if "\t" in line}
    assert set(rows) == {"py-serving", "py-draining"}
    _, enabled, uri, weight, state, models, raw = rows["py-serving"]
    assert (enabled, uri, weight, state) == ("true", "grpc://127.0.0.1:8500", "3.5", "SERVING")
    assert models == "{ctr=[12, 13]}"
    assert '"payload":{"@class":"java.util.LinkedHashMap","schema":1,"weight":3.5' in raw
    assert '"samples_per_s":9000.0' in raw
    _, enabled, uri, weight, state, *_ = rows["py-draining"]
    assert (enabled, weight, state) == ("false", "0.0", "DRAINING")
    serving.close()
    draining.close()


def test_python_reads_a_curator_registered_instance(classpath, zk_settings, make_client):
    # Curator's unregister deletes without draining first: our watcher holds the
    # loss for the protection window (2 s here), then accepts it.
    watcher = MembershipWatcher(make_client(), "ctr",
                                config=WatcherConfig(protection=Protection(hold_s=2.0))).start()
    proc = subprocess.Popen(
        java(classpath, zk_settings.hosts, "/weiserving/services", "register", "ctr", "java-1", "127.0.0.9", "9100"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "REGISTERED", proc.stderr.read()[-2000:]
        snap = watcher.wait_for(lambda s: "java-1" in s.instances)
        r = snap.get("java-1")
        assert (r.address, r.port, r.weight, r.state) == ("127.0.0.9", 9100, 2.5, State.SERVING)
        assert r.capacity == Capacity(cpu_cores=16.0, samples_per_s=12000.0)
        assert r.models == {"ctr": (12, 13)} and r.labels == {"lang": "java"}
        assert r.zone == "zone-java" and r.enabled and r.registration_time_ms > 0
    finally:
        proc.stdin.close()  # the program unregisters, then exits
        assert proc.wait(timeout=60) == 0
    snap = watcher.wait_for(lambda s: "java-1" not in s.instances, timeout=40)
    assert "protection expired" in snap.reason
    watcher.close()
