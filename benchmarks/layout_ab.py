"""A/B of the named array layout: ``seq1d`` (shipped) vs ``grid2d`` (the paper's), same budget.

Usage:
    python benchmarks/layout_ab.py [--minutes 15] [--threads 1] [--work runs/layout_ab]

Trains the ``cpu`` preset from scratch twice with ``pccd train`` — once as is (rows as a 1-D
sequence of 9 channels) and once with ``--model-option layout=grid2d`` (the paper's 3-channel
128 × 3 image, Conv2d) — for the same wall time on the same data and seed, then a third
``seq1d`` run stopped at the step count that ``grid2d`` reached, so the layouts are compared
both at equal compute time (what the 8-hour budget cares about) and at equal optimiser steps.
Each run's EMA weights are scored by the same fixed-noise L1 ε loss on 512 val crystals and by
generation quality on 200 val element lists (DDIM 20): exact elements, validity, atom-count
Wasserstein. Run on a quiet machine (one run at a time).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch
from common import SPLITS, fixed_noise_val_loss, load_checkpoint, val_table

from pccd.evaluate import request_quality
from pccd.generator import Request
from pccd.model import forward_flops
from pccd.pipeline import PCCDPipeline
from pccd.training import export_pretrained

ROOT = Path(__file__).resolve().parents[1]


def train_run(out: Path, minutes: float | None, steps: int, layout: str, threads: int) -> Path:
    """Train (or resume) one run with the ``pccd`` command; returns its exported model dir."""
    pccd = str(Path(sys.executable).with_name("pccd"))
    cmd = [
        pccd, "train", "--data", str(SPLITS / "train.csv.gz"),
        "--val", str(SPLITS / "val.csv.gz"), "--val-size", "256", "--out", str(out),
        "--threads", str(threads), "--quiet", "--model-option", f"layout={layout}",
        "--max-steps", str(steps), "--checkpoint-minutes", "5",
    ]  # fmt: skip
    model_dir = out / "model"
    if (model_dir / "pccd.json").exists():  # finished before: rerunning the script resumes
        return model_dir
    if minutes is not None:  # an interrupted timed run resumes for the minutes it has left
        done = load_checkpoint(out)["train_seconds"] / 60 if (out / "last.ckpt").exists() else 0.0
        cmd += ["--max-minutes", f"{max(minutes - done, 0.1):.2f}"]
    subprocess.run(cmd, check=True)
    return export_pretrained(out / "last.ckpt", model_dir)


def quality(pipe: PCCDPipeline, n: int = 200) -> dict:
    table = val_table()
    requests = [Request.parse(els) for els in table.draw_element_lists(n, 0)]
    samples = pipe.generate(requests, seed=0, batch_size=100)
    return request_quality(
        [s.structure for s in samples], [r.elements for r in requests], table.num_sites().tolist()
    )


def score(name: str, run: Path, model_dir: Path, threads: int) -> dict:
    torch.set_num_threads(threads)
    ckpt = load_checkpoint(run)
    pipe = PCCDPipeline.from_pretrained(model_dir)
    steps = int(ckpt["global_step"])
    seconds = float(ckpt["train_seconds"])
    row = {
        "run": name,
        "layout": pipe.model.config.layout,
        "steps": steps,
        "train_minutes": round(seconds / 60, 2),
        "samples_per_s": round(steps * 128 / seconds, 1),
        "gflop_per_sample": round(forward_flops(pipe.model) / 1e9, 3),
        "val_loss_fixed_noise": round(fixed_noise_val_loss(pipe), 5),
        **quality(pipe),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default=str(ROOT / "runs" / "layout_ab"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "layout_ab.json"))
    args = ap.parse_args()
    work = Path(args.work)
    rows = []
    for layout in ("seq1d", "grid2d"):
        run = work / f"{layout}-{args.minutes:g}min"
        rows.append(score(run.name, run, train_run(run, args.minutes, -1, layout, args.threads),
                          args.threads))  # fmt: skip
    same_steps = rows[1]["steps"]
    run = work / f"seq1d-{same_steps}steps"
    rows.append(
        score(run.name, run, train_run(run, None, same_steps, "seq1d", args.threads), args.threads)
    )
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": vars(args),
        "runs": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
