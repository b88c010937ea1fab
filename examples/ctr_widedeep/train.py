"""Export the example CTR model: ``python examples/ctr_widedeep/train.py --out models``.

Writes ``OUT/ctr/1`` and ``OUT/ctr/2`` (the small Wide&Deep model, trained with
different seeds and lengths), ``OUT/ctr_lr/1`` (a logistic-regression baseline
served by the Python backend, same signature) and, with ``--heavy``,
``OUT/ctr_heavy/1`` (wider embeddings and a 1024-1024-512 tower).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root, for weiclient

from examples.ctr_widedeep.lr import export_lr  # noqa: E402
from examples.ctr_widedeep.widedeep import HEAVY, ModelSpec, export  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="models", help="model repository root (default: models)")
    parser.add_argument("--steps", type=int, default=300, help="training steps per version")
    parser.add_argument("--heavy", action="store_true", help="also export ctr_heavy/1")
    args = parser.parse_args(argv)
    out = Path(args.out)
    for version in (1, 2):
        path = export(out / "ctr", version, spec=ModelSpec(), steps=args.steps * version)
        print(f"exported {path}")
    print(f"exported {export_lr(out / 'ctr_lr', 1, steps=args.steps)}")
    if args.heavy:
        print(f"exported {export(out / 'ctr_heavy', 1, spec=HEAVY, steps=20)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
