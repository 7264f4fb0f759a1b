"""Plausible share of raw samples by decoded atom count: does the geometry fail per pair?

Usage:
    python benchmarks/plausible_by_size.py MODEL [MODEL ...] [--n 200] [--threads 2]

Generates for ``n`` val element lists (seed 3, DDIM 20: the A/B protocol's draws) and splits
the decoded crystals by atom count. If every atom got a too-close neighbour with the same
probability q, independently, a crystal of N atoms would be plausible with probability
(1 − q)^N: the share would fall steeply with N while the q fitted per bin (at the bin's middle
size) stays flat. Both are reported (failed decodes are counted in ``failed``, not in a bin).
Rows go to ``benchmarks/results/plausible_by_size.jsonl``.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

import torch
from layout_ab import _val_table

from pccd.evaluate.geometry import PLAUSIBLE_RATIO, covalent_ratio
from pccd.pipeline import PCCDPipeline, Request

ROOT = Path(__file__).resolve().parents[1]
BINS = ((1, 2), (3, 4), (5, 8), (9, 16))


def by_size(model: str, n: int) -> dict:
    pipe = PCCDPipeline.from_pretrained(model, device="cpu")
    requests = [Request.parse(els) for els in _val_table().draw_element_lists(n, 3)]
    samples = pipe.generate(requests, seed=3, batch_size=100)
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


if __name__ == "__main__":
    main()
