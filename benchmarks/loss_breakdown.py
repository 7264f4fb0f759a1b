"""Where a model's denoising loss sits: per channel and per noise level, with x̂_0's error.

Usage:
    python benchmarks/loss_breakdown.py MODEL [MODEL ...] [--n 512] [--threads 1]

Run 3's val loss kept falling while its samples' geometry did not move, and a decay phase
lowered the loss further with no gain in geometry (BENCHMARKS, issue 11). The paper's loss is
one L1 mean over all 3×128×3 entries and all steps, so it cannot say *where* a model got
better: the lattice and element channels are far easier than the coordinates, and the near-clean
steps far easier than the mid-noise steps where atoms are placed. This splits the fixed-noise
val loss (the same 512 val crystals in their file frames, as ``common.fixed_noise_val_loss``)
by channel at ten noise levels t = 50, 150, …, 950, every crystal at every level with fixed
noise, and adds channel 0's mean |x̂_0 − x_0| in fractional units (the coordinate error that
becomes a distance error). One JSON per call: ``results/loss_breakdown.json`` by default, a
record per model.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from common import fixed_val_dataset

from pccd.pipeline import PCCDPipeline
from pccd.training import collate

ROOT = Path(__file__).resolve().parents[1]
LEVELS = tuple(range(50, 1000, 100))
CHANNELS = ("coordinates", "elements", "lattice")


def breakdown(model: str, n: int = 512, batch: int = 128) -> dict:
    """Per noise level: mean L1 ε error of each channel, and channel 0's x̂_0 error (fraction)."""
    pipe = PCCDPipeline.from_pretrained(model)
    ds = fixed_val_dataset(pipe, n)
    scheduler = pipe.make_scheduler("ddpm", None)
    rows = []
    with torch.no_grad():
        for t in LEVELS:
            sums = np.zeros(len(CHANNELS) + 1)
            for b, start in enumerate(range(0, n, batch)):
                x, cond = collate([ds[i] for i in range(start, min(n, start + batch))])
                gen = torch.Generator().manual_seed(20_000 + 100 * b + t)
                noise = torch.randn(x.shape, generator=gen)
                ts = torch.full((len(x),), t)
                x_t = scheduler.add_noise(x, noise, ts)
                eps = scheduler.eps_from_output(pipe.model(x_t, ts, cond), ts, x_t)
                x0 = scheduler.predict_x0_batch(eps, ts, x_t).clamp(-1.0, 1.0)
                err = (eps - noise).abs().mean(dim=(2, 3)).sum(dim=0)  # (3,) summed over batch
                sums[:3] += err.numpy()
                sums[3] += float((x0 - x)[:, 0].abs().mean(dim=(1, 2)).sum()) / 2.0
            mean = sums / n
            per_channel = zip(CHANNELS, mean[:3], strict=True)
            row = {"t": t, **{f"eps_l1_{c}": round(float(v), 5) for c, v in per_channel}}
            rows.append({**row, "x0_error_frac": round(float(mean[3]), 5)})
    # the paper's loss weights the three channels equally: its mean over levels and channels
    total = float(np.mean([[r[f"eps_l1_{c}"] for c in CHANNELS] for r in rows]))
    shares = {
        c: round(float(np.mean([r[f"eps_l1_{c}"] for r in rows])) / (3 * total), 4)
        for c in CHANNELS
    }
    return {"model": model, "n": n, "levels": rows, "mean_loss": round(total, 5), "share": shares}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="shipped names or model directories")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/loss_breakdown.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    records = json.loads(args.out.read_text()) if args.out.exists() else {}
    for model in args.models:
        record = breakdown(model, args.n)
        record["date"] = datetime.now(UTC).isoformat(timespec="seconds")
        records[model] = record
        args.out.write_text(json.dumps(records, indent=1) + "\n")  # written as each finishes
        print(f"{model}: mean L1 {record['mean_loss']}, share by channel {record['share']}")
        for r in record["levels"]:
            print("  ", r)


if __name__ == "__main__":
    main()
