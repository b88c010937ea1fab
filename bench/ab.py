"""One benchmark at two revisions of this repository, run alternately on the same machine.

A refactoring must not cost speed, and this machine is shared and noisy: two
runs minutes apart differ by more than the change. So the benchmark runs at
the base revision (a temporary ``git worktree``) and at the working tree in
turn, ``--rounds`` times each, and the chosen column of every table row is
compared by its median over the rounds::

    .venv/bin/python bench/ab.py --base c20ef54~1 --column "ratio p50" -- bench/overhead.py --calls 2000

Both sides use this virtualenv; each runs its own copy of the script and of
the packages (the worktree is first on ``sys.path`` for its side). Rows are
read from the rich tables the benchmark prints (``│ name │ ... │``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent


def run(tree: Path, argv: list[str], console: Console, tries: int = 2) -> str:
    """The benchmark's output; a failed run (a crashed helper process, say) is tried again once."""
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "250", "PYTHONUNBUFFERED": "1"}
    for attempt in range(1, tries + 1):
        done = subprocess.run([sys.executable, *argv], cwd=tree, env=env, capture_output=True, text=True,
                              check=False)
        if done.returncode == 0:
            return done.stdout
        why = done.stderr.strip().splitlines()[-1:] or ["no message"]
        console.print(f"{argv[0]} failed at {tree} (exit {done.returncode}, try {attempt}/{tries}): {why[0]}")
    raise SystemExit(f"{argv[0]} failed {tries} times at {tree}")


def rows(output: str, column: str) -> dict[str, float]:
    """{first cell: value of ``column``} for every rich table row in ``output`` that has that column."""
    found: dict[str, float] = {}
    header: list[str] | None = None
    for line in output.splitlines():
        if "│" not in line and "┃" not in line:
            continue
        cells = [c.strip() for c in line.replace("┃", "│").strip().strip("│").split("│")]
        if column in cells:
            header = cells
        elif header is not None and len(cells) == len(header) and cells[0]:
            try:
                found[cells[0]] = float(cells[header.index(column)].rstrip("x×%"))
            except ValueError:
                continue
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the revision to compare with (e.g. main~3)")
    ap.add_argument("--column", required=True, help="the table column to compare (e.g. 'ratio p50')")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("bench", nargs=argparse.REMAINDER, help="-- SCRIPT [ARGS]")
    args = ap.parse_args()
    argv = args.bench[1:] if args.bench[:1] == ["--"] else args.bench
    if not argv:
        ap.error("name the benchmark after --")
    console = Console(width=160)
    with tempfile.TemporaryDirectory(prefix="wei-ab-") as tmp:
        base = Path(tmp) / "base"
        made = subprocess.run(["git", "worktree", "add", "--detach", str(base), args.base], cwd=ROOT,
                              capture_output=True, text=True, check=False)
        if made.returncode != 0:
            console.print(f"cannot check out {args.base}: {made.stderr.strip()}")
            return 1
        results: dict[str, list[dict[str, float]]] = {"base": [], "head": []}
        try:
            for i in range(args.rounds):
                for side, tree in (("base", base), ("head", ROOT)):
                    console.print(f"round {i + 1}/{args.rounds}: {side}", style="dim")
                    results[side].append(rows(run(tree, argv, console), args.column))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
    table = Table(title=f"{' '.join(argv)}: '{args.column}', median of {args.rounds} alternating rounds")
    for col in ("row", f"base {args.base}", "head", "head / base"):
        table.add_column(col, justify="left" if col == "row" else "right")
    for name in results["head"][0]:
        b = [r[name] for r in results["base"] if name in r]
        h = [r[name] for r in results["head"] if name in r]
        if not b:
            continue
        mb, mh = statistics.median(b), statistics.median(h)
        table.add_row(name, f"{mb:.3f}", f"{mh:.3f}", f"{mh / mb:.3f}" if mb else "-")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
