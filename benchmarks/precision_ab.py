"""float32 vs bfloat16 sampling of one model: the same draws, quality side by side.

Usage:
    python benchmarks/precision_ab.py [--model pccd-cpu] [--n 400] [--threads 1]

bfloat16 autocast changes the crystals a seed gives, so "is it as good?" is a question about
distributions: both precisions sample the same ``n`` val element lists with the same seeds
(DDIM 20), and the row reports each one's geometry (plausible share, median covalent ratio),
exact-elements share, and how many bfloat16 crystals match their float32 twin
(``StructureMatcher`` defaults). Quality only, no timing (``generate_speed.py`` times it), so it
may run beside other work. Writes ``benchmarks/results/precision_ab_<model>.json``.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

import torch
from pymatgen.analysis.structure_matcher import StructureMatcher

from pccd import data
from pccd.evaluate import request_quality
from pccd.evaluate.geometry import geometry_summary
from pccd.generator import Request
from pccd.pipeline import PCCDPipeline

ROOT = Path(__file__).resolve().parents[1]
VAL = ROOT.parent / "shared" / "data" / "mp_pccd" / "val.csv.gz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pccd-cpu")
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    table = data.load(VAL).table
    requests = [Request.parse(els) for els in table.draw_element_lists(args.n, 3)]
    structures = {}
    row: dict = {"model": args.model, "n": args.n}
    for precision in ("float32", "bfloat16"):
        pipe = PCCDPipeline.from_pretrained(args.model, precision=precision)
        samples = pipe.generate(requests, seed=0, batch_size=100)
        structures[precision] = [s.structure for s in samples]
        row[precision] = {
            **geometry_summary(structures[precision]).to_dict(),
            **request_quality(
                structures[precision], [r.elements for r in requests], table.num_sites().tolist()
            ),
        }
    matcher = StructureMatcher()

    def same(a, b) -> bool:
        try:
            return a is not None and b is not None and bool(matcher.fit(a, b))
        except Exception:  # degenerate cells can break the lattice search: not a match
            return False

    row["bfloat16_matches_float32"] = sum(
        same(a, b) for a, b in zip(structures["float32"], structures["bfloat16"], strict=True)
    )
    row.update(
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        settings={"sampler": "ddim", "steps": 20, "seed": 0, "lists_seed": 3, "val": str(VAL)},
    )
    name = Path(args.model).name
    out = args.out or ROOT / "benchmarks" / "results" / f"precision_ab_{name}.json"
    out.write_text(json.dumps(row, indent=1) + "\n")
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
