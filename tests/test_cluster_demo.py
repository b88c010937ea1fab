"""`make demo` (examples/cluster_demo.py --fast): the whole path runs and no call fails."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_cluster_demo_runs_without_errors():
    pytest.importorskip("tensorflow", reason="the demo exports the TF model (pip install .[tf])")
    out = subprocess.run([sys.executable, str(REPO / "examples" / "cluster_demo.py"), "--fast"],
                         capture_output=True, text=True, timeout=600, env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "demo ok:" in out.stdout and ", 0 errors," in out.stdout
    outage = next(line for line in out.stdout.splitlines() if line.startswith("ZooKeeper down:"))
    assert int(outage.split()[2]) > 0, outage  # calls kept flowing with ZooKeeper stopped
    # the demo's pods (their command lines name its model directory) are gone
    assert "wei-demo-" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
