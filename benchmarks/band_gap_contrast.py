"""How much of the band gap does the element list already say? Facts behind the contrast draws.

Usage:
    python benchmarks/band_gap_contrast.py [--split ../shared/data/mp_pccd/train.csv.gz]
        [--out benchmarks/results/band_gap_contrast.json]

Why: a model conditioned on the elements *and* the gap learns what the gap adds only from rows
where the elements do not already fix it. This reports, over the split's rows with a gap:

* ``r2_of_gap_from_element_list``: 1 − (within-list variance / total variance) of the gap,
  i.e. the share of its variance that the per-element-list mean explains;
* the contrast rows of :func:`pccd.training.band_gap_contrast_rows` (lists with known gaps on
  both sides of the 0.1 eV metal line) — what ``band_gap_contrast_weight`` draws more often —
  and, stricter, lists holding a metal and a gap ≥ 1.5 eV, with their row and list counts.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from pccd import data
from pccd.conditioning import METAL_THRESHOLD_EV
from pccd.training import band_gap_contrast_rows

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPLIT = ROOT.parent / "shared" / "data" / "mp_pccd" / "train.csv.gz"
WIDE_GAP_EV = 1.5


def contrast_facts(table: data.CrystalTable) -> dict[str, object]:
    """The figures named in the module docstring, for one table."""
    gaps = table.band_gap
    known = np.flatnonzero(np.isfinite(gaps))
    # groups of the lists that have a gap, renumbered 0..m-1
    _, group = np.unique(table.element_list_groups()[0][known], return_inverse=True)
    y = gaps[known]
    means = np.bincount(group, weights=y) / np.bincount(group)
    within = float(((y - means[group]) ** 2).sum())
    total = float(((y - y.mean()) ** 2).sum())
    has_metal = np.bincount(group, weights=y < METAL_THRESHOLD_EV) > 0
    has_wide = np.bincount(group, weights=y >= WIDE_GAP_EV) > 0
    wide_lists = has_metal & has_wide
    contrast = band_gap_contrast_rows(table)
    contrast_lists = len(np.unique(group[contrast[known]]))
    return {
        "rows": len(table),
        "rows_with_gap": len(known),
        "element_lists_with_gap": len(means),
        "r2_of_gap_from_element_list": round(1 - within / total, 4),
        "metal_threshold_eV": METAL_THRESHOLD_EV,
        "contrast_rows": int(contrast.sum()),
        "contrast_lists": int(contrast_lists),
        "contrast_share_of_rows": round(float(contrast.mean()), 4),
        "wide_gap_eV": WIDE_GAP_EV,
        "metal_and_wide_gap_lists": int(wide_lists.sum()),
        "metal_and_wide_gap_rows": int(wide_lists[group].sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default=str(DEFAULT_SPLIT))
    ap.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "band_gap_contrast.json")
    )
    args = ap.parse_args()
    facts = contrast_facts(data.load(args.split).table)
    split = Path(args.split).resolve()
    row = {
        "split": str(split.relative_to(ROOT.parent))
        if split.is_relative_to(ROOT.parent)
        else str(split),
        **facts,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    Path(args.out).write_text(json.dumps(row, indent=2) + "\n")
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
