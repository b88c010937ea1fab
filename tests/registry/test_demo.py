"""Smoke test: ``examples/registry_demo.py --fast`` runs its whole story and leaves no ZooKeeper behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parents[2] / "examples" / "registry_demo.py"


def test_demo_runs_to_a_clean_exit():
    result = subprocess.run([sys.executable, str(DEMO), "--fast"], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "200"}, timeout=180)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Traceback" not in out + result.stderr
    for expected in (
        "» 4 pods register: WARMING",
        "now SERVING",
        "watcher v",  # the watcher published snapshots
        "watch: removed cpu8-a",
        "re-registered under a new session by itself",
        "split ctr v12=90% v13=10%",
        "10,000 picks -> v12 9",  # about 90% of picks go to v12
    ):
        assert expected in out, f"{expected!r} missing from:\n{out}"
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("demo ok: 4 pods") and "session expiry survived" in summary, summary
    # The demo's own ZooKeeper (its data directory is on the java command line) is gone.
    data_dir = re.search(r"^ZooKeeper: \S+ \(data (\S+)\)$", out, re.M)
    assert data_dir, out
    pattern = f"QuorumPeerMain {data_dir.group(1)}/"
    left = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    assert left.stdout == "", f"ZooKeeper left running: {left.stdout}"
