"""One training curve from a resumed run's Lightning logs.

Usage:
    python benchmarks/run_curve.py RUN_DIR OUT.csv

Every (resumed) run of ``pccd train`` logs into its own ``RUN_DIR/logs/version_N``. A run that
was killed after its last checkpoint logged steps that the next run redid from the checkpoint,
so a later version replaces the rows of the earlier ones from its first step on; what is left
is the curve of the weights that exist. Columns: epoch, samples_seen, step, train_loss,
val_loss and, for runs with a learning-rate schedule, lr.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

COLUMNS = ("epoch", "samples_seen", "step", "train_loss", "val_loss", "lr")


def joined_curve(run: Path) -> pd.DataFrame:
    """The run's logs in version order, each cutting off what it redid of the earlier ones."""
    versions = sorted(run.glob("logs/version_*"), key=lambda p: int(p.name.rsplit("_", 1)[1]))
    if not versions:
        raise FileNotFoundError(f"{run}: no logs/version_* directories")
    curve = pd.DataFrame()
    for version in versions:
        rows = pd.read_csv(version / "metrics.csv")
        if len(curve):
            curve = curve[curve["step"] < rows["step"].min()]
        curve = pd.concat([curve, rows], ignore_index=True)
    return curve[[c for c in COLUMNS if c in curve]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    curve = joined_curve(args.run)
    curve.to_csv(args.out, index=False)
    print(f"{args.out}: {len(curve)} rows, steps {curve['step'].min()}–{curve['step'].max()}")


if __name__ == "__main__":
    main()
