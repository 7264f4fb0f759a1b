"""Plausible share of raw samples by decoded atom count: does the geometry fail per pair?

Usage:
    python benchmarks/plausible_by_size.py MODEL [MODEL ...] [--n 200] [--threads 2]

Generates for ``n`` val element lists (seed 3, DDIM 20: the A/B protocol's draws) and splits
the decoded crystals by atom count. If every atom got a too-close neighbour with the same
probability q, independently, a crystal of N atoms would be plausible with probability
(1 − q)^N: the share would fall steeply with N while the q fitted per bin (at the bin's middle
size) stays flat. Both are reported (failed decodes are counted in ``failed``, not in a bin).

Each row also asks whether the failures are a periodicity blind spot (fractional coordinates
are diffused as if Euclidean, so atoms at 0.02 and 0.98 look far apart to the network): for
every failing crystal, does its closest pair meet across the cell boundary (a non-zero image
offset)? And how many crystals would pass if only in-cell pairs counted? The same figures for
the same lattices and compositions with uniformly random positions are the control: a model
blind to the wrap would fail across the boundary far more often than random placement does.
Rows go to ``benchmarks/results/plausible_by_size.jsonl``.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from common import IMAGES, pair_ratios, val_table
from pymatgen.core import Structure

from pccd.evaluate.geometry import PLAUSIBLE_RATIO, covalent_ratio
from pccd.generator import Request
from pccd.pipeline import PCCDPipeline

ROOT = Path(__file__).resolve().parents[1]
BINS = ((1, 2), (3, 4), (5, 8), (9, 16))


def closest_pair(structure: Structure) -> tuple[float, bool, float]:
    """(smallest covalent ratio over pairs and the 27 nearest images, whether that pair meets
    across the cell boundary, smallest ratio over in-cell pairs only — inf for one atom)."""
    ratio = pair_ratios(structure)
    a, b, image = np.unravel_index(np.argmin(ratio), ratio.shape)
    return float(ratio[a, b, image]), bool(IMAGES[image].any()), float(ratio[..., 13].min())


def wrap_figures(structures: list[Structure]) -> dict:
    """Where the failing crystals' closest pairs meet (see the module docstring)."""
    pairs = [closest_pair(s) for s in structures]
    failing = [wrapped for ratio, wrapped, _ in pairs if ratio < PLAUSIBLE_RATIO]
    return {
        "crystals": len(pairs),
        "plausible": sum(ratio >= PLAUSIBLE_RATIO for ratio, _, _ in pairs),
        "plausible_in_cell_pairs_only": sum(cell >= PLAUSIBLE_RATIO for _, _, cell in pairs),
        "failing": len(failing),
        "failing_closest_pair_across_boundary": sum(failing),
    }


def by_size(model: str, n: int) -> dict:
    pipe = PCCDPipeline.from_pretrained(model, device="cpu")
    requests = [Request.parse(els) for els in val_table().draw_element_lists(n, 3)]
    samples = pipe.generate(requests, seed=3, batch_size=100)
    decoded = [s.structure for s in samples if s.structure is not None]
    rng = np.random.default_rng(3)
    shuffled = [Structure(s.lattice, s.species, rng.random((len(s), 3))) for s in decoded]
    counts = {f"{lo}-{hi}": [0, 0] for lo, hi in BINS}
    for s in samples:
        if s.structure is None:
            continue
        size = len(s.structure)
        key = next(f"{lo}-{hi}" for lo, hi in BINS if lo <= size <= hi)
        counts[key][0] += 1
        counts[key][1] += covalent_ratio(s.structure) >= PLAUSIBLE_RATIO
    bins = {}
    for (lo, hi), (key, (total, good)) in zip(BINS, counts.items(), strict=True):
        share = good / total if total else None
        q = 1 - share ** (2 / (lo + hi)) if share else None
        bins[key] = {"crystals": total, "plausible": good, "share": share, "atom_failure_q": q}
    return {
        "model": model,
        "n": n,
        "failed": sum(s.structure is None for s in samples),
        "bins": bins,
        "boundary": wrap_figures(decoded),
        "boundary_random_positions": wrap_figures(shuffled),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="shipped names or model directories")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = ROOT / "benchmarks" / "results" / "plausible_by_size.jsonl"
    for model in args.models:
        row = by_size(model, args.n)
        with out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        cells = "  ".join(
            f"{k}: {v['plausible']}/{v['crystals']}"
            + (f" (q {v['atom_failure_q']:.2f})" if v["atom_failure_q"] is not None else "")
            for k, v in row["bins"].items()
        )
        print(f"{model}: {cells}  failed {row['failed']}")
        for key in ("boundary", "boundary_random_positions"):
            w = row[key]
            print(
                f"  {key}: plausible {w['plausible']}/{w['crystals']}, in-cell pairs only "
                f"{w['plausible_in_cell_pairs_only']}; of {w['failing']} failing, closest pair "
                f"across the boundary in {w['failing_closest_pair_across_boundary']}"
            )


if __name__ == "__main__":
    main()
