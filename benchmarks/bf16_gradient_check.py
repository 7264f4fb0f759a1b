"""Is bfloat16-autocast training the same training? Loss and gradient of one batch both ways.

Usage:
    python benchmarks/bf16_gradient_check.py RUN_DIR [--batches 4] [--threads 1]

For a real checkpoint (``RUN_DIR/last.ckpt``, the network being trained, not its EMA), each of
``--batches`` batches of 64 val crystals with fixed timesteps and noise gets the diffusion loss
and its gradient in float32 and under bfloat16 autocast. Reported: both losses, the cosine and
the relative norm of the gradient difference, and for scale the same relative difference
between the float32 gradients of two *different* batches (the minibatch noise that SGD
already lives with). Writes ``benchmarks/results/bf16_gradient_check.json``.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from pccd import data
from pccd.diffusion import DDPMScheduler, diffusion_loss
from pccd.model import PCCDUNet
from pccd.training import CrystalDataset, TrainConfig, collate

ROOT = Path(__file__).resolve().parents[1]
VAL = ROOT.parent / "shared" / "data" / "mp_pccd_bulk" / "val.csv.gz"


def gradient(model, scheduler, x, cond, seed: int, bf16: bool) -> tuple[float, torch.Tensor]:
    model.zero_grad()
    gen = torch.Generator().manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = diffusion_loss(model, scheduler, x, cond, generator=gen)
    loss.backward()
    return float(loss), torch.cat(
        [p.grad.flatten() for p in model.parameters() if p.grad is not None]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "bf16_gradient_check.json"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = torch.load(args.run / "last.ckpt", map_location="cpu", weights_only=False)
    cfg = TrainConfig(**ckpt["hyper_parameters"]["config"])
    model = PCCDUNet.from_preset(cfg.preset, **cfg.model_overrides)
    model.load_state_dict(
        {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    )
    step = int(ckpt["global_step"])
    del ckpt
    table = data.load(VAL).table
    idx = np.random.default_rng(0).choice(len(table), 64 * args.batches, replace=False)
    ds = CrystalDataset(table.subset(np.sort(idx)), cfg.representation(), augment=False)
    scheduler = DDPMScheduler()
    rows, previous = [], None
    for b in range(args.batches):
        x, cond = collate([ds[i] for i in range(64 * b, 64 * (b + 1))])
        loss32, g32 = gradient(model, scheduler, x, cond, b, bf16=False)
        loss16, g16 = gradient(model, scheduler, x, cond, b, bf16=True)
        row = {
            "loss_float32": loss32,
            "loss_bfloat16": loss16,
            "grad_cosine": float(torch.nn.functional.cosine_similarity(g32, g16, dim=0)),
            "grad_rel_diff": float((g16 - g32).norm() / g32.norm()),
        }
        if previous is not None:  # minibatch noise for scale
            row["grad_rel_diff_to_previous_batch_float32"] = float(
                (g32 - previous).norm() / g32.norm()
            )
        previous = g32
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {
        "run": str(args.run),
        "step": step,
        "preset": cfg.preset,
        "batches": rows,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
