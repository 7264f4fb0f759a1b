"""Generation quality of a model on element lists drawn from the val split (model issue target).

Usage:
    python benchmarks/generation_quality.py [--model DIR] [--n 1000] [--steps N] [--seed 0]

For each of n samples, a val crystal is drawn (seeded) and its element list is the request
(no formula, band gap or magnetic condition). Reports, over all n samples (a failed decode counts
as a miss): the share that decode to a crystal with exactly the requested elements; the share
structurally valid (all distances ≥ 0.5 Å, 5–60 Å³ per atom); and the Wasserstein distance of
the atom-count distribution of the decoded crystals to the val split's; and the geometry of the
raw samples (pccd.evaluate.geometry): the share whose smallest covalent ratio is ≥ 0.7, the
median ratio and the share with a space group above P-1 (symprec 0.1 Å), all over n; and the
SMACT-valid share of compositions (CDVAE's rule), over n. Any model family (``--model``
pccd-cpu or pccd-atoms), with the model's own default sampler unless ``--sampler`` is given.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import torch

from pccd import data
from pccd.evaluate import is_compositionally_valid, request_quality
from pccd.evaluate.geometry import geometry_summary
from pccd.generator import Request, load_pretrained

ROOT = Path(__file__).resolve().parents[1]
VAL = ROOT.parent / "shared" / "data" / "mp_pccd" / "val.csv.gz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model directory (default: shipped model)")
    ap.add_argument("--data", default=str(VAL))
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--sampler", default=None, help="default: the model's own")
    ap.add_argument("--steps", type=int, default=None, help="default: the pipeline default")
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--repulsion", type=float, default=None, help="sampling-time repulsion")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON output (default benchmarks/results/...)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    table = data.load(args.data).table
    requests = [Request.parse(els) for els in table.draw_element_lists(args.n, args.seed)]
    pipe = load_pretrained(args.model)
    args.sampler = args.sampler or pipe.samplers[0]
    t0 = time.perf_counter()
    samples = pipe.generate(
        requests,
        sampler=args.sampler,
        steps=args.steps,
        guidance_scale=args.guidance,
        repulsion=args.repulsion,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    seconds = time.perf_counter() - t0
    counts = [len(s.structure) for s in samples if s.structure is not None]
    structures = [s.structure for s in samples]
    quality = request_quality(structures, [r.elements for r in requests], table.num_sites())
    smact = [s is not None and is_compositionally_valid(s.composition) for s in structures]
    failures = Counter(s.failure.reason.value for s in samples if s.failure is not None)
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": str(args.model or "shipped"),
        "family": pipe.family,
        "precision": pipe.precision,
        "settings": vars(args),
        "n": args.n,
        "decoded": len(counts) / args.n,
        **quality,
        "smact_valid": sum(smact) / args.n,
        "geometry": geometry_summary(structures).to_dict(),
        "atom_count_hist": dict(sorted(Counter(counts).items())),
        "failures": dict(failures),
        "sampling_seconds": seconds,
    }
    out = Path(args.out or ROOT / "benchmarks" / "results" / "generation_quality.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=2))


if __name__ == "__main__":
    main()
