"""Training throughput of atom-model sizes at 1 and 2 threads (how the presets were chosen).

    python benchmarks/atoms_throughput.py --sizes 128x4,192x6,256x6 --threads 1,2 --batches 25

Times ``--batches`` optimiser steps (after 3 warm-up steps) of batches of 128 crystals drawn
from the bulk train split's padded arrays (``runs/atoms/train_arrays.npz``, built by
``benchmarks/train_atoms.py``), for each hidden×layers size and thread count, and writes one
JSON line each: samples per second and the parameter count. Run it on a quiet machine.
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

from pccd.families.atoms.batch import AtomArrays
from pccd.families.atoms.denoiser import AtomDenoiserConfig
from pccd.families.atoms.diffusion import AtomDiffusion, AtomModelConfig

ROOT = Path(__file__).resolve().parents[1]


def throughput(arrays: AtomArrays, hidden: int, layers: int, batches: int, seed: int) -> float:
    torch.manual_seed(seed)
    model = AtomDiffusion(AtomModelConfig(denoiser=AtomDenoiserConfig(hidden, layers)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    seconds = 0.0
    for step in range(batches + 3):
        batch = arrays.batch(rng.choice(len(arrays), 128, replace=False))
        tick = time.perf_counter()
        loss, _ = model.loss(batch, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= 3:
            seconds += time.perf_counter() - tick
    return 128 * batches / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="128x4,192x6,256x6")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batches", type=int, default=25)
    ap.add_argument("--arrays", type=Path, default=ROOT / "runs" / "atoms" / "train_arrays.npz")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/atoms_throughput.jsonl")
    args = ap.parse_args()
    arrays = AtomArrays.from_npz(args.arrays)
    for size in args.sizes.split(","):
        hidden, layers = (int(x) for x in size.split("x"))
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            rate = throughput(arrays, hidden, layers, args.batches, seed=0)
            params = sum(
                p.numel()
                for p in AtomDiffusion(
                    AtomModelConfig(denoiser=AtomDenoiserConfig(hidden, layers))
                ).parameters()
            )
            row = {
                "size": size, "threads": threads, "samples_per_s": round(rate, 1),
                "parameters": params, "batches": args.batches,
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "load_average": [round(x, 2) for x in os.getloadavg()],
            }  # fmt: skip
            print(json.dumps(row), flush=True)
            with args.out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
