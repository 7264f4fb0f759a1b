"""Training throughput and peak memory of network presets, alternating in one run.

Usage:
    python benchmarks/train_throughput.py [--presets cpu,paper] [--rounds 2] [--steps 3]
        [--threads 2] [--batch-size 128]
    python benchmarks/train_throughput.py --presets wide,wide:bfloat16 --batch-size 64

A preset may carry a precision after a colon (``wide:bfloat16``: the forward and backward
under bfloat16 autocast with fp32 weights, as ``pccd train --precision bfloat16``).

Each measurement runs in a fresh subprocess (so its peak RSS is its own): it builds the
preset, encodes a batch of real val crystals, runs warm-up steps, then times ``--steps`` full
training steps (diffusion loss, backward, Adam). Presets alternate (cpu, paper, cpu, paper, …)
so a drift in machine speed hits both. Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VAL = ROOT.parent / "shared" / "data" / "mp_pccd" / "val.csv.gz"


def worker(
    entry: str, steps: int, warmup: int, threads: int, batch_size: int, compile: bool
) -> dict:
    import torch

    from pccd import data
    from pccd import representation as rep
    from pccd.diffusion import DDPMScheduler, diffusion_loss
    from pccd.model import PCCDUNet, count_parameters, forward_flops
    from pccd.training import CrystalDataset, collate

    preset, _, precision = entry.partition(":")
    bf16 = precision == "bfloat16"
    if precision not in ("", "float32", "bfloat16"):
        raise ValueError(f"precision must be float32 or bfloat16, got {precision!r}")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    table = data.load(VAL).table
    ds = CrystalDataset(table, rep.RepresentationConfig())
    x, cond = collate([ds[i] for i in range(batch_size)])
    model = PCCDUNet.from_preset(preset)
    flops = forward_flops(model)
    if compile:
        model.compile()  # in place: state-dict keys (and so checkpoints) are unchanged
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.99))
    scheduler = DDPMScheduler()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = diffusion_loss(model, scheduler, x, cond.drop({"elements": 0.1}))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step = sum(times) / len(times)
    return {
        "preset": entry,
        "precision": "bfloat16" if bf16 else "float32",
        "compile": compile,
        "params": count_parameters(model),
        "gflop_per_sample": flops / 1e9,
        "step_seconds": step,
        "samples_per_s": batch_size / step,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="cpu,paper")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--compile", action="store_true", help="torch.compile both networks")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_throughput.json"))
    args = ap.parse_args()
    if args.worker:
        steps = args.steps if not args.worker.startswith("cpu") else max(args.steps, 10)
        print(
            json.dumps(
                worker(args.worker, steps, args.warmup, args.threads, args.batch_size, args.compile)
            )
        )
        return
    runs = []
    for r in range(args.rounds):
        for preset in args.presets.split(","):
            cmd = [sys.executable, __file__, "--worker", preset, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--threads", str(args.threads),
                   "--batch-size", str(args.batch_size)]  # fmt: skip
            if args.compile:
                cmd.append("--compile")
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            res = json.loads(out.strip().splitlines()[-1]) | {"round": r}
            runs.append(res)
            print(json.dumps(res))
    summary = {}
    for preset in args.presets.split(","):
        rs = [x for x in runs if x["preset"] == preset]
        summary[preset] = {
            "samples_per_s": sum(x["samples_per_s"] for x in rs) / len(rs),
            "peak_rss_mb": max(x["peak_rss_mb"] for x in rs),
            "params": rs[0]["params"],
            "gflop_per_sample": rs[0]["gflop_per_sample"],
        }
    names = args.presets.split(",")
    if len(names) == 2:
        summary["ratio"] = summary[names[0]]["samples_per_s"] / summary[names[1]]["samples_per_s"]
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {k: v for k, v in vars(args).items() if k != "worker"},
        "runs": runs,
        "summary": summary,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
