"""Screening throughput on this machine: crystals/min and median seconds per relaxation.

Usage:
    python benchmarks/screen_throughput.py [--n 40] [--mlips chgnet,7net-0] [--workers 2]

Generates ``n`` crystals with the shipped model for element lists drawn from the val split
(seeded), then times ``screen_directory`` end to end per MLIP (relaxation, hull from the shipped
reference table, novelty against mp_reference, writing). A MLIP without a shipped reference
table is timed without the hull (its first use of a chemical system would compute references,
which is a one-off cost, not throughput). Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from pccd.pipeline import PCCDPipeline, Request
from pccd.screen.references import shipped_table
from pccd.screen.screening import ScreenSettings, screen_directory

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--mlips", default="chgnet,7net-0")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference", default=str(DATA / "mp_reference.csv.gz"))
    ap.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "screen_throughput.json")
    )
    args = ap.parse_args()
    val = pd.read_csv(DATA / "mp_pccd" / "val.csv.gz", index_col=0)
    rng = np.random.default_rng(args.seed)
    picks = rng.choice(len(val), size=args.n, replace=False)
    lists = [val.iloc[int(i)]["elements"] for i in picks]
    requests = [Request.parse([e.strip(" '") for e in els.strip("[]").split(",")]) for els in lists]
    result: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": vars(args),
        "per_mlip": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        gen = Path(tmp) / "generated"
        gen.mkdir()
        pipe = PCCDPipeline.from_pretrained()
        for batch in pipe.iter_generate(requests, seed=args.seed, batch_size=args.n):
            for s in batch:
                if s.structure is not None:
                    s.structure.to(filename=str(gen / f"{s.index:03d}.cif"))
        n_cifs = len(list(gen.glob("*.cif")))
        for name in args.mlips.split(","):
            has_table = shipped_table(name).exists()
            settings = ScreenSettings(mlip=name, reference=args.reference if has_table else None)
            t0 = time.perf_counter()
            path = screen_directory(gen, Path(tmp) / name, settings, workers=args.workers)
            wall = time.perf_counter() - t0
            with path.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
            secs = [(int(r["atoms"]), float(r["seconds"])) for r in rows if r["seconds"]]
            mid = [s for a, s in secs if 10 <= a <= 14]
            entry = {
                "crystals": len(rows),
                "relaxed": len(secs),
                "hull_included": has_table,
                "wall_seconds": wall,
                "crystals_per_minute": 60 * len(rows) / wall,
                "median_seconds_per_relaxation": statistics.median(s for _, s in secs),
                "median_seconds_10_to_14_atoms": statistics.median(mid) if mid else None,
                "n_10_to_14_atoms": len(mid),
                "converged": sum(r["converged"] == "True" for r in rows),
                "status": {
                    k: sum(r["status"] == k for r in rows) for k in {r["status"] for r in rows}
                },
            }
            result["per_mlip"][name] = entry
            result["generated_cifs"] = n_cifs
            print(name, json.dumps(entry), flush=True)
            Path(args.out).write_text(json.dumps(result, indent=2))  # kept if a later MLIP stops


if __name__ == "__main__":
    main()
