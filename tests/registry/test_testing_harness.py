"""The embedded ZooKeeper leaves nothing behind, whatever happens to its owner."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from registry.testing import EmbeddedZooKeeperError, ZooKeeperEnsemble, four_letter_word, zookeeper_from_env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); treat it as dead
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def test_single_node_answers_and_cleans_up():
    zk = ZooKeeperEnsemble(1).start()
    member = zk.members[0]
    pid, directory = member.process.pid, member.directory
    assert four_letter_word(member.client_port, "ruok") == "imok"
    assert member.mode() == "standalone" and zk.leader() is member
    zk.stop()
    zk.stop()  # idempotent
    assert not _alive(pid) and not directory.exists()


def test_cleans_up_when_the_body_raises():
    with pytest.raises(RuntimeError), ZooKeeperEnsemble(1) as zk:
        pid, directory = zk.members[0].process.pid, zk.members[0].directory
        raise RuntimeError("test failed")
    assert not _alive(pid) and not directory.exists()


def test_members_die_with_a_killed_owner(tmp_path):
    script = textwrap.dedent("""
        import sys, time
        from registry.testing import ZooKeeperEnsemble
        zk = ZooKeeperEnsemble(1).start()
        print(zk.members[0].process.pid, flush=True)
        time.sleep(600)
    """)
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    java_pid = int(owner.stdout.readline())
    assert _alive(java_pid)
    owner.send_signal(signal.SIGKILL)
    owner.wait(timeout=30)
    # PR_SET_PDEATHSIG delivers SIGKILL to the JVM when its parent dies.
    # The JVM is not our child: poll the kernel for its end (bounded).
    for _ in range(400):
        if not _alive(java_pid):
            break
        time.sleep(0.05)
    assert not _alive(java_pid)


def test_leader_kill_and_restart_in_a_quorum():
    with ZooKeeperEnsemble(3) as zk:
        modes = sorted(m.mode() for m in zk.members)
        assert modes == ["follower", "follower", "leader"]
        leader = zk.leader()
        zk.kill(leader)
        assert not leader.running
        zk.wait_serving([m for m in zk.members if m is not leader])
        assert zk.leader() is not leader
        zk.restart(leader)
        assert leader.mode() == "follower"


def test_backend_choice_errors_are_clear(monkeypatch):
    monkeypatch.setenv("WEISERVING_ZK_BACKEND", "k8s")
    with pytest.raises(EmbeddedZooKeeperError, match="'local' or 'testcontainers'"):
        zookeeper_from_env(1)


def test_testcontainers_backend_without_docker_engine_says_so(monkeypatch):
    monkeypatch.setenv("WEISERVING_ZK_BACKEND", "testcontainers")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    zk = zookeeper_from_env(1)
    with pytest.raises(EmbeddedZooKeeperError, match="no Docker engine answers"):
        zk.start()
