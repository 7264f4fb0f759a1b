"""Recompute the discovery-batch and screening-throughput shares from the result files.

Every share counts every crystal (a failed relaxation is a miss, listed by kind); the shares
over crystals that got an E_hull are printed apart. ``batches/`` holds `pccd-cpu`'s three
discovery batches, ``batches_atoms/`` `pccd-atoms`'s. Reads only ``benchmarks/results/``:

    .venv/bin/python benchmarks/result_shares.py
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from pccd.experiments.discovery import batch_statistics

RESULTS = Path(__file__).resolve().parent / "results"


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def main() -> None:
    for path in sorted(RESULTS.glob("batches*/batch*/batch*.csv")):
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        s = batch_statistics(rows)
        n, r = s["generated"], s["of_relaxed"]
        counts = {
            key: round(s[key] * n) if s[key] is not None else None
            for key in ("e_hull_below_0.25", "e_hull_below_0.08", "novel", "sun")
        }
        print(f"{path.relative_to(RESULTS)}: {n} generated, {s['with_e_hull']} with E_hull, "
              f"{s['failed']} failed {s['failures']}")  # fmt: skip
        print(f"  of all {n}: < 0.25 {counts['e_hull_below_0.25']} ({pct(s['e_hull_below_0.25'])}),"
              f" < 0.08 {counts['e_hull_below_0.08']} ({pct(s['e_hull_below_0.08'])}),"
              f" novel {counts['novel']} ({pct(s['novel'])}), S.U.N. {counts['sun']}"
              f" ({pct(s['sun'])})")  # fmt: skip
        print(f"  of the {r['crystals']} with E_hull: < 0.25 {pct(r['e_hull_below_0.25'])}, "
              f"< 0.08 {pct(r['e_hull_below_0.08'])}, novel {pct(r['novel'])}, "
              f"S.U.N. {pct(r['sun'])}")  # fmt: skip
    for path in sorted(RESULTS.glob("screen_throughput*.json")):
        data = json.loads(path.read_text())
        per_mlip = data.get("per_mlip", {})
        if not per_mlip or not all("crystals" in m for m in per_mlip.values()):
            print(f"{path.name}: another layout (A/B or Dask arms), not summarised here")
            continue
        for mlip, m in per_mlip.items():
            n, wall = m["crystals"], m["wall_seconds"]
            workers = data["settings"]["workers"]
            print(f"{path.name} {mlip} ({data['date']}): {n} crystals, status {m['status']}; "
                  f"{m['crystals_per_minute']:.2f} crystals/min over all {n}; wall "
                  f"{wall / n:.1f} s per crystal over all {n} ({workers * wall / n:.1f} "
                  f"worker-s); median {m['median_seconds_per_relaxation']:.1f} s per relaxation "
                  f"over the {m['relaxed']} relaxed; converged {m['converged']}")  # fmt: skip


if __name__ == "__main__":
    main()
