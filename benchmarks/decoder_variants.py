"""Decoder options compared on the same generated arrays: element match, failures, atom counts.

Usage:
    python benchmarks/decoder_variants.py [--model DIR] [--data CSV] [--n 300] [--steps N]

Samples n arrays once (element lists drawn from the val split as in generation_quality.py),
then decodes them under each decoder variant: pooled vs per-element clustering, with and
without merging of overlapping clusters, and several DBSCAN eps / min_samples.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import torch

from pccd import data
from pccd import representation as rep
from pccd.evaluate import request_quality
from pccd.generator import Request
from pccd.pipeline import PCCDPipeline

ROOT = Path(__file__).resolve().parents[1]
VAL = ROOT.parent / "shared" / "data" / "mp_pccd" / "val.csv.gz"
VARIANTS = {
    "pooled, no merge (authors' scheme, periodic)": {"cluster_by": "all", "merge_overlaps": False},
    "per-element, no merge": {"cluster_by": "element", "merge_overlaps": False},
    "per-element + merge (default)": {},
    "per-element + merge, eps 0.7": {"eps": 0.7},
    "per-element + merge, eps 0.4": {"eps": 0.4},
    "per-element + merge, eps 0.3": {"eps": 0.3},
    "per-element + merge, eps 0.25": {"eps": 0.25},
    "per-element + merge, min_samples 2": {"min_samples": 2},
    "per-element + merge, min_samples 5": {"min_samples": 5},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument(
        "--data",
        default=str(VAL),
        help="split whose element lists and atom counts are used (tune on train, confirm on val)",
    )
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--steps", type=int, default=None, help="default: the pipeline default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "decoder_variants.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    table = data.load(args.data).table
    requests = [Request.parse(els) for els in table.draw_element_lists(args.n, args.seed)]
    pipe = PCCDPipeline.from_pretrained(args.model)
    samples = pipe.generate(requests, steps=args.steps, seed=args.seed, batch_size=100)
    ref = table.num_sites().tolist()
    results = {}
    for name, options in VARIANTS.items():
        cfg = replace(
            pipe.rep_config,
            **{k: rep.ClusterBy(v) if k == "cluster_by" else v for k, v in options.items()},
        )
        outs = [
            rep.decode(s.array, list(r.elements), cfg)
            for s, r in zip(samples, requests, strict=True)
        ]
        structs = [o if not isinstance(o, rep.DecodeFailure) else None for o in outs]
        results[name] = {
            **request_quality(structs, [r.elements for r in requests], ref),
            "failures": dict(
                Counter(o.reason.value for o in outs if isinstance(o, rep.DecodeFailure))
            ),
        }
        r = results[name]
        print(
            f"{name:<45} exact {100 * r['exact_elements']:5.1f}%  valid {100 * r['valid']:5.1f}%  "
            f"W {r['atom_count_wasserstein']:.2f}  {r['failures']}"
        )
    out = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": vars(args),
        "variants": results,
    }
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
