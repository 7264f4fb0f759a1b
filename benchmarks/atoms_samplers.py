"""Quality against speed of an atom model's samplers: the evidence for its default sampler.

    python benchmarks/atoms_samplers.py --model DIR --configs ode:50,ode:100,ode:200,pc \
        --n 200 --out benchmarks/results/atoms_samplers.jsonl

For each ``sampler:steps`` (``pc`` alone: every timestep) the model generates, through the
generator seam as ``pccd generate`` does, one de novo crystal for each of ``n`` element lists
drawn (seeded) from the val split and one CSP candidate for each of ``n`` val crystals' cell
formulas. One JSON line per config: the plausible share (smallest d/(r_i + r_j) ≥ 0.7), the
shares above P1 and above P-1 (spglib, 0.1 Å), exact elements of de novo crystals, the CSP
match rate (``StructureMatcher.get_rms_dist``, DiffCSP tolerances), the strict ``fit`` rate,
the RMS of matches, and the sampling seconds per 100 crystals. Every sample is in every
denominator. Pause other heavy jobs while it runs: the seconds are only comparable on a quiet
machine (the line records the load average).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from pymatgen.analysis.structure_matcher import StructureMatcher

from pccd import data
from pccd.evaluate.generation_metrics import has_exact_elements
from pccd.evaluate.geometry import geometry_summary
from pccd.evaluate.matching import MATCHER_TOLERANCES, cell_formula, match_candidate
from pccd.generator import Request, load_pretrained

ROOT = Path(__file__).resolve().parents[1]
VAL = ROOT.parent / "shared" / "data" / "mp_pccd_bulk" / "val.csv.gz"


def parse_config(text: str) -> tuple[str, int | None]:
    """``ode:100`` → ("ode", 100); ``pc`` → ("pc", None)."""
    name, _, steps = text.partition(":")
    return name, int(steps) if steps else None


def timed(pipe, requests, sampler, steps, seed) -> tuple[list, float]:
    tick = time.perf_counter()
    samples = pipe.generate(requests, sampler=sampler, steps=steps, seed=seed)
    return [s.structure for s in samples], time.perf_counter() - tick


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--configs", default="ode:50,ode:100,ode:200")
    ap.add_argument("--data", default=str(VAL))
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="float32", help="the network's (--precision)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "atoms_samplers.jsonl"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    table = data.load(args.data).table
    pipe = load_pretrained(args.model, "cpu", precision=args.precision)
    lists = table.draw_element_lists(args.n, args.seed)
    denovo = [Request.parse(els) for els in lists]
    index = np.random.default_rng(args.seed).choice(len(table), args.n, replace=False)
    truth = [table.structure(int(i)) for i in index]
    csp = [Request.parse(None, formula=cell_formula(s)) for s in truth]
    matcher = StructureMatcher(**MATCHER_TOLERANCES)
    for config in args.configs.split(","):
        sampler, steps = parse_config(config)
        made, seconds_denovo = timed(pipe, denovo, sampler, steps, args.seed)
        cand, seconds_csp = timed(pipe, csp, sampler, steps, args.seed)
        rms, strict = [], 0
        for pred, true in zip(cand, truth, strict=True):
            got = None if pred is None else match_candidate(pred, true, matcher)
            if got is not None:
                rms.append(got)
                strict += bool(matcher.fit(pred, true))
        row = {
            "config": config,
            "model": str(args.model),
            "precision": args.precision,
            "training_steps": pipe.meta.get("training", {}).get("steps"),
            "n": args.n,
            "denovo": {
                **geometry_summary(made).to_dict(),
                "exact_elements": float(
                    np.mean([has_exact_elements(s, r) for s, r in zip(made, lists, strict=True)])
                ),
            },
            "csp": {
                **geometry_summary(cand).to_dict(),
                "match": len(rms) / args.n,
                "strict": strict / args.n,
                "rms": float(np.mean(rms)) if rms else None,
            },
            "seconds_per_100": round(50 * (seconds_denovo + seconds_csp) / args.n, 2),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "threads": args.threads,
                        "load_average": [round(x, 2) for x in os.getloadavg()]},
        }  # fmt: skip
        print(json.dumps(row))
        with open(args.out, "a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
