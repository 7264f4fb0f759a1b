"""A/B of candidate fixes for implausible geometry, each a named option, same budget and seed.

Usage:
    python benchmarks/geometry_ab.py VARIANT [VARIANT ...] [--steps 1200] [--threads 2]

Every variant fine-tunes the shipped ``pccd-cpu`` weights (``init_from``; new layers start as
the identity, see :func:`pccd.model.warm_start`) for the same number of optimiser steps at the
same learning rate and seed, then is scored on the same draws:

* fixed-noise L1 ε loss on 512 val crystals;
* geometry of raw samples for 200 val element lists (DDIM 20, seed 3): plausible share
  (smallest covalent ratio ≥ 0.7), median ratio, share above P-1 — plus exact elements,
  validity and atom-count Wasserstein;
* CSP k = 1 on 200 val formulas: match rate by the peers' ``get_rms_dist`` and by the strict
  ``fit``, mean RMS of matches, and the candidates' plausible share.

Variant ``shipped`` scores ``pccd-cpu`` itself (no training); ``shipped+repulsion`` scores it
with the sampling-time repulsion option (tau 0.85) — guidance, reported apart from the models.
Rows are appended to ``benchmarks/results/geometry_ab.jsonl`` as each variant finishes; a
finished variant is not rerun. Run on a quiet machine, one variant at a time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch
from common import SHARED_DATA, score_model

from pccd.training import export_pretrained

ROOT = Path(__file__).resolve().parents[1]

VARIANTS: dict[str, dict] = {
    # control: the shipped training recipe continued for the same steps
    "base": {},
    # the authors' data handling: the CIF's own origin and atom order, no augmentation
    "noaug": {"option": ["atom_order=file", "random_shift=false"]},
    # full attention at every level (128 and 64 rows too), so each row sees every atom
    "attn_all": {"model_option": ["attention_levels=null"]},
    # cos/sin(2π·frac) of the noisy coordinates as extra inputs
    "periodic": {"model_option": ["periodic_features=true"]},
    # full attention at every level with periodic pair biases between rows
    "attn_pair": {"model_option": ["attention_levels=null", "pair_bias=true"]},
    # min-SNR-5 loss weighting (Hang et al. 2023): gradient budget moved to mid-noise steps
    "minsnr": {"option": ["loss_weighting=min_snr"]},
    # fixed row layout: atom i always in rows [8i, 8i+8), absent atoms' rows empty
    "fixed": {"option": ["row_layout=fixed"]},
    # self-conditioning on the previous x̂_0 (Chen et al. 2023)
    "selfcond": {"model_option": ["self_condition=true"]},
    # auxiliary loss on x̂_0's neighbour distances (pccd.pair_loss), weight 0.1
    "pairloss": {"option": ["pair_loss_weight=0.1"]},
    "attn_all+periodic": {
        "model_option": ["attention_levels=null", "periodic_features=true"],
    },
    "attn_all+noaug": {
        "model_option": ["attention_levels=null"],
        "option": ["atom_order=file", "random_shift=false"],
    },
}


def train_variant(name: str, work: Path, steps: int, threads: int, data: str) -> Path:
    """Fine-tune (or resume) one variant with the ``pccd`` command; returns its model dir."""
    out = work / name
    model_dir = out / "model"
    if (model_dir / "pccd.json").exists():
        return model_dir
    spec = VARIANTS[name]
    pccd = str(Path(sys.executable).with_name("pccd"))
    cmd = [
        pccd, "train", "--data", str(SHARED_DATA / data / "train.csv.gz"),
        "--val", str(SHARED_DATA / data / "val.csv.gz"), "--val-size", "256", "--out", str(out),
        "--threads", str(threads), "--quiet", "--max-steps", str(steps),
        "--checkpoint-minutes", "5", "--lr", "1e-4", "--option", "init_from=pccd-cpu",
    ]  # fmt: skip
    for flag in ("option", "model_option"):
        for value in spec.get(flag, []):
            cmd += [f"--{flag.replace('_', '-')}", value]
    subprocess.run(cmd, check=True)
    return export_pretrained(out / "last.ckpt", model_dir)


def score(
    name: str, model_dir: Path | str, run: Path | None, repulsion: float | None = None
) -> dict:
    """A variant's A/B row (:func:`common.score_model`), recording its recipe."""
    return score_model(name, model_dir, run, repulsion, spec=VARIANTS.get(name, {}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", choices=["shipped", "shipped+repulsion", *VARIANTS])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default="mp_pccd", help="training split folder under shared/data")
    ap.add_argument("--work", default=str(ROOT / "runs" / "geometry_ab"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "geometry_ab.jsonl"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    done = set()
    if out.exists():
        done = {json.loads(line)["variant"] for line in out.read_text().splitlines() if line}
    for name in args.variants:
        if name in done:
            continue
        if name == "shipped":
            row = score(name, "pccd-cpu", None)
        elif name == "shipped+repulsion":  # the sampling-time option, not a trained variant
            row = score(name, "pccd-cpu", None, repulsion=0.85)
        else:
            work = Path(args.work)
            row = score(name, train_variant(name, work, args.steps, args.threads, args.data),
                        work / name)  # fmt: skip
        row.update(
            date=datetime.now(UTC).isoformat(timespec="seconds"),
            settings={"steps": args.steps, "lr": 1e-4, "data": args.data, "seed": 0},
        )
        print(json.dumps(row), flush=True)
        with out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
