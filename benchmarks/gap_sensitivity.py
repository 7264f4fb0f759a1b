"""How much does the network's noise prediction depend on the band gap it is given?

Usage:
    python benchmarks/gap_sensitivity.py MODEL [MODEL ...] [--n 512] [--threads 2]
        [--out benchmarks/results/gap_sensitivity.jsonl]

Why: classifier-free guidance predicts ε_∅ + s·(ε_c − ε_∅), so between two requests that differ
only in the gap the guided predictions differ by exactly s·(ε(gap = 4) − ε(gap = 0)) whatever
the null branch is. How far asking for 4 eV instead of 0 can move a sample therefore rests on
one thing the guidance scale multiplies: how much the network's own prediction changes with the
gap. This script measures that directly, without sampling and without the band-gap instrument
(whose composition-only reading caps the steering benchmark, BENCHMARKS "per-list ceiling").

Protocol: the 512 val crystals of the fixed-noise loss (``common.fixed_val_dataset``, their
file frames), each noised to t = 100, 300, 500, 700 and 900 with fixed noise; the network is
given the crystal's elements (no formula, as in generation) and, in turn, gap 0 eV, gap 4 eV and
no gap. Reported per t, as mean absolute differences per array entry (the L1 loss's scale):

* ``gap_effect``: |ε(elements, 4 eV) − ε(elements, 0 eV)|;
* ``elements_effect``: |ε(elements) − ε(∅)|, what naming the elements changes, for scale;
* ``ratio``: gap_effect / elements_effect;

and the same two effects per channel of the array (``coords``, ``elements``, ``lattice``: channel
0, 1, 2), because only channel 1 — which element each row is — changes a composition, the one
thing the instrument reads.

Rows are appended to ``--out``, one per model, as each finishes.
"""

from __future__ import annotations

import argparse
import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from common import fixed_val_dataset

from pccd.pipeline import PCCDPipeline
from pccd.training import collate

ROOT = Path(__file__).resolve().parents[1]
TIMESTEPS = (100, 300, 500, 700, 900)
LOW_GAP, HIGH_GAP = 0.0, 4.0
CHANNELS = ("coords", "elements", "lattice")


def _with_gap(cond, gap: float):
    """``cond`` without a formula, and with every sample's gap set to ``gap`` (NaN = none)."""
    out = cond.without(["formula"])
    out.band_gap = torch.full_like(out.band_gap, gap)
    return out


def sensitivity(pipe: PCCDPipeline, n: int = 512, batch: int = 128) -> dict[str, dict]:
    """Per time step: mean |ε(4 eV) − ε(0 eV)| and |ε(elements) − ε(∅)|, overall and per
    channel, and their ratio."""
    ds = fixed_val_dataset(pipe, n)
    scheduler = pipe.make_scheduler("ddpm", None)
    model = pipe.model.eval()
    # per t: summed |difference| per channel, for the gap and for the elements
    sums = {t: np.zeros((2, len(CHANNELS))) for t in TIMESTEPS}
    with torch.no_grad():
        for b, start in enumerate(range(0, n, batch)):
            x0, cond = collate([ds[i] for i in range(start, min(n, start + batch))])
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(20_000 + b))
            for t_value in TIMESTEPS:
                t = torch.full((x0.shape[0],), t_value, dtype=torch.long)
                x_t = scheduler.add_noise(x0, noise, t)
                eps = {
                    gap: model(x_t, t, _with_gap(cond, gap)).float()
                    for gap in (LOW_GAP, HIGH_GAP, math.nan)
                }
                eps_null = model(x_t, t, cond.null_like()).float()
                gap_diff = (eps[HIGH_GAP] - eps[LOW_GAP]).abs().sum(dim=(0, 2, 3))
                el_diff = (eps[math.nan] - eps_null).abs().sum(dim=(0, 2, 3))
                sums[t_value] += torch.stack([gap_diff, el_diff]).numpy()
    per_channel = x0[0, 0].numel()  # entries per sample and channel
    out = {}
    for t_value, (gap_sum, el_sum) in sums.items():
        out[str(t_value)] = {
            "gap_effect": round(float(gap_sum.mean()) / (n * per_channel), 5),
            "elements_effect": round(float(el_sum.mean()) / (n * per_channel), 5),
            "ratio": round(float(gap_sum.sum() / el_sum.sum()), 4),
            "gap_effect_by_channel": {
                c: round(float(v) / (n * per_channel), 5)
                for c, v in zip(CHANNELS, gap_sum, strict=True)
            },
            "elements_effect_by_channel": {
                c: round(float(v) / (n * per_channel), 5)
                for c, v in zip(CHANNELS, el_sum, strict=True)
            },
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="shipped model names or model directories")
    ap.add_argument("--n", type=int, default=512, help="val crystals (the fixed-noise set)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gap_sensitivity.jsonl"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        pipe = PCCDPipeline.from_pretrained(name)
        row = {
            "model": name,
            "n": args.n,
            "gaps_eV": [LOW_GAP, HIGH_GAP],
            "per_t": sensitivity(pipe, args.n),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        with out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"{name}:")
        for t_value, r in row["per_t"].items():
            by = "  ".join(
                f"{c} {r['gap_effect_by_channel'][c]:.4f}/{r['elements_effect_by_channel'][c]:.4f}"
                for c in CHANNELS
            )
            print(
                f"  t={t_value:>4}  gap effect {r['gap_effect']:.4f}  "
                f"elements effect {r['elements_effect']:.4f}  ratio {r['ratio']:.3f}  "
                f"(gap/elements by channel: {by})"
            )


if __name__ == "__main__":
    main()
