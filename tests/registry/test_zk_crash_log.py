"""An embedded ZooKeeper member that dies says how, with its output and its kept crash log
(issue 10, part 8: "ZooKeeper member 1 exited with -11", and the crash log went away with
the temporary directory)."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest

from registry.testing import ZooKeeperEnsemble, ZooKeeperSettings
from registry.testing import ensemble as ensemble_module
from registry.testing.process import CRASH_DIR, EmbeddedZooKeeperError, Member, java_command


def test_a_jvm_crash_keeps_its_log_outside_the_ensemble_and_the_error_names_it():
    ensemble = ZooKeeperEnsemble(1).start()
    member = ensemble.members[0]
    crash = None
    try:
        assert member.process is not None
        os.kill(member.process.pid, signal.SIGSEGV)    # the JVM's handler takes it: a crash
        assert member.process.wait(30) == -signal.SIGABRT
        with pytest.raises(EmbeddedZooKeeperError) as err:
            ensemble.wait_serving()
        message = str(err.value)
        crash = member.crash_log()
        assert crash is not None and crash.parent == CRASH_DIR
        assert message.startswith(f"ZooKeeper member 1 exited with {-signal.SIGABRT}")
        assert "A fatal error has been detected by the Java Runtime Environment" in message  # the tail
        assert "(ended by SIGABRT" in message and f"JVM crash log kept at {crash}" in message
    finally:
        ensemble.stop()
    try:
        assert crash.is_file() and "SIGSEGV" in crash.read_text()   # outlives the ensemble
    finally:
        crash.unlink(missing_ok=True)


def test_a_process_killed_before_the_jvm_wrote_a_line_says_so(tmp_path):
    fake_java = tmp_path / "java"
    fake_java.write_text("#!/bin/sh\nkill -SEGV $$\n")
    fake_java.chmod(fake_java.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(EmbeddedZooKeeperError) as err:
        ZooKeeperEnsemble(1, settings=ZooKeeperSettings(java=str(fake_java))).start()
    message = str(err.value)
    assert message.startswith(f"ZooKeeper member 1 exited with {-signal.SIGSEGV}")
    assert "the process ended before the JVM wrote a line" in message
    assert "(ended by SIGSEGV; a crash the JVM handled ends by SIGABRT with a crash log)" in message


def test_the_jvm_runs_without_a_small_stack_and_with_a_kept_error_file(tmp_path):
    m = Member(myid=2, client_port=1, peer_port=2, election_port=3, directory=tmp_path / "zk2")
    cmd = java_command(ZooKeeperSettings(), m)
    assert not any(a.startswith("-Xss") for a in cmd)
    assert f"-XX:ErrorFile={CRASH_DIR / m.name}-%p.log" in cmd
    assert m.name == f"{tmp_path.name}-zk2"
    assert Path(cmd[cmd.index("-cp") + 1].split(":")[0]).name == "zookeeper.jar"


def test_members_are_spawned_without_a_preexec_fn(monkeypatch):
    """A preexec_fn forces fork() and every at-fork handler (gRPC, OpenBLAS) in the starting
    process: in a benchmark that hung it (OpenBLAS's blas_thread_shutdown_). The parent-death
    signal comes from setpriv, after exec; test_members_die_with_a_killed_owner checks it works."""
    seen = []
    real = ensemble_module.subprocess.Popen

    def spy(cmd, **kw):
        seen.append((cmd, kw))
        return real(cmd, **kw)

    monkeypatch.setattr(ensemble_module.subprocess, "Popen", spy)
    with ZooKeeperEnsemble(1):
        pass
    [(cmd, kw)] = seen
    assert kw.get("preexec_fn") is None
    assert Path(cmd[0]).name == "setpriv" and cmd[1:4] == ["--pdeathsig", "KILL", "--"]
