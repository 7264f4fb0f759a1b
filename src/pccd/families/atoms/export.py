"""A training directory → a model directory that :func:`pccd.generator.load_pretrained` reads.

A model directory holds ``config.json`` (the :class:`AtomModelConfig`), ``model.pt`` (the EMA
weights of :class:`AtomDiffusion`, a plain state dict) and ``pccd.json`` (name, ``family``,
trained conditions, the atom-count prior of de novo requests, and the training record).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from pccd.families.atoms.counts import AtomCountPrior
from pccd.families.atoms.training import ATOM_COUNTS, LIVE, TrainRun


def export_pretrained(
    run_dir: str | Path,
    out: str | Path,
    *,
    name: str,
    trained_conditions: tuple[str, ...] = ("elements", "formula", "band_gap", "stability"),
    hardware: str = "",
) -> Path:
    """Write the model directory ``out`` from the training directory ``run_dir``."""
    run_dir, out = Path(run_dir), Path(out)
    run = TrainRun.from_dict(json.loads((run_dir / "train.json").read_text()))
    state = torch.load(run_dir / LIVE, map_location="cpu", weights_only=False)
    prior = AtomCountPrior(json.loads((run_dir / ATOM_COUNTS).read_text()))
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(run.model.to_dict(), indent=2) + "\n")
    torch.save(state["ema"], out / "model.pt")
    curve_file = run_dir / "curve.csv"  # written every log_every steps: a short run has none
    curve = list(csv.DictReader(curve_file.open())) if curve_file.exists() else []
    meta = {
        "name": name,
        "family": "atoms",
        "trained_conditions": list(trained_conditions),
        "atom_counts": prior.to_list(),
        "training": {
            "run": run.to_dict(),
            "steps": state["step"],
            "samples_seen": state["samples"],
            "train_hours": round(state["train_seconds"] / 3600, 3),
            "last_losses": {k: float(curve[-1][k]) for k in ("coord", "lattice", "type")}
            if curve
            else {},
            "hardware": hardware,
        },
    }
    (out / "pccd.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out
