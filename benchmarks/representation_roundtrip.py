"""Representation acceptance figures: round-trip match rate, noise curve, encode/decode speed.

Usage:
    python benchmarks/representation_roundtrip.py [--data PATH] [--n-noise 5000] [--seed 0]

Writes ``benchmarks/results/representation_roundtrip.json`` and prints a summary. Run on a quiet
machine: the throughput figures are wall-clock, single process.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher

from pccd import data
from pccd import representation as rep

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mp_pccd" / "train.csv.gz"


def match_rate(structures, arrays, elements, config, matcher) -> tuple[float, Counter]:
    """Share of arrays that decode to a structure matching the original, and failure reasons."""
    reasons: Counter[str] = Counter()
    ok = 0
    for s, x, els in zip(structures, arrays, elements, strict=True):
        out = rep.decode(x, els, config)
        if isinstance(out, rep.DecodeFailure):
            reasons[out.reason.value] += 1
        elif matcher.fit(s, out):
            ok += 1
        else:
            reasons["no_match"] += 1
    return ok / len(structures), reasons


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--n-noise", type=int, default=5000, help="crystals for the noise curve")
    ap.add_argument("--sigmas", default="0,0.01,0.02,0.03,0.05,0.08,0.1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eps", type=float, default=None, help="DBSCAN eps in Å (default: config)")
    ap.add_argument("--min-samples", type=int, default=None)
    ap.add_argument("--cluster-by", choices=["element", "all"], default=None)
    ap.add_argument("--parts", default="speed,roundtrip,noise", help="what to measure")
    ap.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "representation_roundtrip.json")
    )
    args = ap.parse_args()

    t0 = time.perf_counter()
    loaded = data.load(args.data)
    t_load = time.perf_counter() - t0
    table = loaded.table
    structures = [table.structure(i) for i in range(len(table))]
    print(
        f"loaded {len(table)} crystals ({len(loaded.rejected)} rejected) in {t_load:.1f} s "
        f"(from cache: {loaded.from_cache})"
    )
    matcher = StructureMatcher()
    result: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, 2 cores",
        "data": args.data,
        "n_crystals": len(table),
        "rejected": len(loaded.rejected),
    }

    overrides = {
        k: v
        for k, v in {
            "eps": args.eps,
            "min_samples": args.min_samples,
            "cluster_by": args.cluster_by and rep.ClusterBy(args.cluster_by),
        }.items()
        if v is not None
    }
    cfg = rep.RepresentationConfig(**overrides)
    result["decode_config"] = cfg.to_dict()
    parts = set(args.parts.split(","))
    t0 = time.perf_counter()
    encoded = [rep.encode(s, cfg) for s in structures]
    t_enc = time.perf_counter() - t0
    arrays = np.stack([e[0] for e in encoded])
    elements = [e[1] for e in encoded]
    n_dec = min(5000, len(table))
    t0 = time.perf_counter()
    [rep.decode(x, els, cfg) for x, els in zip(arrays[:n_dec], elements[:n_dec], strict=True)]
    t_dec = time.perf_counter() - t0
    rng = np.random.default_rng(args.seed)
    noisy = arrays[:n_dec] + rng.normal(0, 0.02, arrays[:n_dec].shape)
    t0 = time.perf_counter()
    [rep.decode(x, els, cfg) for x, els in zip(noisy, elements[:n_dec], strict=True)]
    t_dec_noisy = time.perf_counter() - t0
    result["encode_per_s"] = len(structures) / t_enc
    result["decode_per_s"] = n_dec / t_dec
    result["decode_noisy_0.02_per_s"] = n_dec / t_dec_noisy
    print(
        f"encode {result['encode_per_s']:.0f}/s, decode {result['decode_per_s']:.0f}/s "
        f"(σ=0.02: {result['decode_noisy_0.02_per_s']:.0f}/s)"
    )

    # Round trip over every crystal, both lattice schemes
    for scheme in rep.LatticeScheme if "roundtrip" in parts else []:
        c = rep.RepresentationConfig(**{**overrides, "lattice_scheme": scheme})
        xs = (
            arrays
            if scheme is cfg.lattice_scheme
            else np.stack([rep.encode(s, c)[0] for s in structures])
        )
        t0 = time.perf_counter()
        rate, reasons = match_rate(structures, xs, elements, c, matcher)
        result[f"roundtrip_{scheme.value}"] = {"match_rate": rate, "failures": dict(reasons)}
        print(
            f"round trip [{scheme.value}]: {100 * rate:.3f}% match "
            f"({dict(reasons)}) in {time.perf_counter() - t0:.0f} s"
        )

    # Noise curve on a seeded subset
    idx = np.random.default_rng(args.seed).choice(
        len(table), min(args.n_noise, len(table)), replace=False
    )
    curve = {}
    for sigma in [float(s) for s in args.sigmas.split(",")] if "noise" in parts else []:
        noise_rng = np.random.default_rng(args.seed + 1)
        xs = arrays[idx] + noise_rng.normal(0, sigma, arrays[idx].shape)
        rate, reasons = match_rate(
            [structures[i] for i in idx], xs, [elements[i] for i in idx], cfg, matcher
        )
        curve[str(sigma)] = {"match_rate": rate, "failures": dict(reasons)}
        print(f"σ={sigma}: {100 * rate:.2f}% match ({dict(reasons)})")
    result["noise_curve"] = {"n": len(idx), "seed": args.seed, "points": curve}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
