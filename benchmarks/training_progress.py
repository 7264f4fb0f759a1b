"""Quality of a long training run's current checkpoint, one row per scored step.

Usage:
    python benchmarks/training_progress.py RUN_DIR [--name NAME] [--threads 1]

A many-session run (issue 11: "up to ~30 CPU-hours where the curve shows it pays") needs a
curve of what users see, not only of the loss: each call exports the EMA weights of
``RUN_DIR/last.ckpt`` to ``RUN_DIR/progress/step-<N>`` and scores them exactly as the A/B
variants are scored (:func:`common.score_model`: fixed-noise val loss, raw geometry of 200 val
element lists, CSP k = 1 on 200 val formulas), so a row here compares directly with the
``shipped`` row of ``geometry_ab.jsonl``. Rows go to
``benchmarks/results/training_progress.jsonl``; a step already scored is not rerun.

Scoring may run beside the training (one thread each); its ``generate_200_seconds`` is then not
a timing figure, and the row says so (``machine_quiet``).
"""

from __future__ import annotations

import argparse
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import torch
from common import score_model

from pccd.training import export_pretrained

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="training run directory (holds last.ckpt)")
    ap.add_argument("--name", help="row name (default: the run directory's name)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--quiet-machine", action="store_true", help="nothing else ran: the timing is valid"
    )
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "training_progress.jsonl"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    name = args.name or args.run.resolve().name
    # the run keeps saving: read one snapshot so step, weights and timings agree
    snapshot = args.run / "progress" / "scored.ckpt"
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.run / "last.ckpt", snapshot)
    ckpt = torch.load(snapshot, map_location="cpu", weights_only=False)
    step = int(ckpt["global_step"])
    config = ckpt["hyper_parameters"]["config"]
    train_minutes = round(float(ckpt["train_seconds"]) / 60, 2)
    del ckpt
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            row = json.loads(line)
            if row["variant"] == name and row["steps"] == step:
                print(f"{name} step {step} already scored")
                return
    model_dir = args.run / "progress" / f"step-{step}"
    if not (model_dir / "pccd.json").exists():
        export_pretrained(snapshot, model_dir)
    snapshot.unlink()
    row = score_model(name, model_dir, None)
    row.update(
        steps=step,
        train_minutes=train_minutes,
        samples_seen=step * int(config["batch_size"]),
        config={
            **{k: config[k] for k in ("preset", "model_overrides", "batch_size", "lr")},
            # runs from before these options: the plain schedule, ε-prediction, no pair loss
            "snr_shift": config.get("snr_shift", 1.0),
            "prediction": config.get("prediction", "epsilon"),
            "pair_loss_weight": config.get("pair_loss_weight", 0.0),
        },
        machine_quiet=args.quiet_machine,
        date=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
