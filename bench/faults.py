"""The fault suite's table: run ``pytest tests/faults`` and print what each case measured.

    .venv/bin/python bench/faults.py              # about 3 minutes on two cores
    .venv/bin/python bench/faults.py -k zookeeper # a subset (pytest's -k)

Each case runs on a real cluster (a 3-node ZooKeeper ensemble, three pods of ``wei-serve`` and
``wei-agent``, a WeiClient under steady load): see ``tests/faults``. The table lists, per case, the
calls made from the fault on, the errors callers saw by kind, and the recovery time measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default=None, help="run only the cases matching this pytest expression")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "faults.json"
        cmd = [sys.executable, "-m", "pytest", "tests/faults", "-q", "-p", "no:cacheprovider"]
        if args.k:
            cmd += ["-k", args.k]
        rc = subprocess.call(cmd, cwd=REPO, env={**os.environ, "WEI_FAULTS_REPORT": str(report)})
        rows = json.loads(report.read_text()) if report.exists() else []
    table = Table(title="fault cases: errors callers saw, recovery measured")
    for col in ("case", "calls", "errors", "recovery", "what recovery measures", "notes"):
        table.add_column(col, justify="right" if col in ("calls", "recovery") else "left")
    for r in rows:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "0"
        recovery = "-" if r["recovery_s"] is None else f"{r['recovery_s']:.2f} s"
        notes = "; ".join(f"{k} {v}" for k, v in r["notes"].items())
        table.add_row(r["case"], str(r["calls"]), errors, recovery, r["recovery"], notes)
    Console(width=200).print(table)
    return rc


if __name__ == "__main__":
    sys.exit(main())
