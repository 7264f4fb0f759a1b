"""Can the network fit a small set? Train on 256 train crystals, then ask for those crystals back.

Usage:
    python benchmarks/memorisation.py [--steps 2500] [--threads 2] [--work runs/memorisation]
        [--option KEY=VALUE ...] [--model-option KEY=VALUE ...] [--precision bfloat16] [--n 256]

A model that generalises poorly can still reproduce what it was trained on; one that cannot even
do that is limited by what it can learn (capacity, representation, objective), not by data. The
256 crystals (seed 0 from ``mp_pccd/train``) are repeated 16× per epoch so validation runs
rarely; training uses the file origin and atom order (no augmentation) so each crystal is one
fixed array. Scored on the same 256 crystals: CSP k = 1 with each crystal's own formula (match to
itself by the peers' ``get_rms_dist``) and de novo with its element list (match to itself), with
the geometry of both sample sets and the model's x̂_0 error per noise level; beside them CSP on
256 val formulas (``val_csp``, rows from 2026-12-06 on), so a fitted set shows whether it taught
the network anything about crystals it has not seen. The row is appended
to ``benchmarks/results/memorisation.jsonl``; ``--score-only RUN`` scores an existing run.

A run directory that already holds a checkpoint is resumed, so calling again with a larger
``--steps`` extends the same run and adds a row per call: a learning curve of the test itself.
``--precision bfloat16`` trains 1.5× faster on CPUs with bf16 units (the rows say which).
``--n`` sets the size of the set (default 256; a larger set is repeated fewer times per epoch
and its first 256 crystals are scored), to see how the steps a set needs grow with its size.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pymatgen.analysis.structure_matcher import StructureMatcher

from pccd import data
from pccd.evaluate.geometry import PLAUSIBLE_RATIO, covalent_ratio, geometry_summary
from pccd.evaluate.matching import MATCHER_TOLERANCES, cell_formula
from pccd.generator import Request
from pccd.pipeline import PCCDPipeline
from pccd.training import CrystalDataset, collate, export_pretrained

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT.parent / "shared" / "data" / "mp_pccd" / "train.csv.gz"
VAL = TRAIN.with_name("val.csv.gz")
N = 256
"""Crystals in the set by default, and how many of any set are scored (scoring cost stays fixed)."""
EPOCH_ROWS = 4096
"""Training rows per epoch (the set repeated), so validation runs equally rarely for any size."""
NOISE_STEPS = (100, 300, 500, 700)


def make_set(work: Path, n: int = N) -> tuple[Path, Path]:
    """The n crystals (seed 0), and the same repeated to ~EPOCH_ROWS rows (the training file)."""
    work.mkdir(parents=True, exist_ok=True)
    times = max(1, EPOCH_ROWS // n)
    one, repeated = work / f"set{n}.csv", work / f"set{n}x{times}.csv"
    if not repeated.exists():
        df = pd.read_csv(TRAIN).sample(n, random_state=0)
        df.to_csv(one, index=False)
        pd.concat([df] * times).to_csv(repeated, index=False)
    return one, repeated


def x0_error(pipe: PCCDPipeline, table: data.CrystalTable) -> dict[str, float]:
    """Mean |x̂_0 − x_0| of channel 0 in fractional units at a few noise levels (fixed noise)."""
    ds = CrystalDataset(table, pipe.rep_config, augment=False)
    x, cond = collate([ds[i] for i in range(len(ds))])
    sched, gen = pipe.make_scheduler("ddpm", None), torch.Generator().manual_seed(0)
    out = {}
    with torch.no_grad():
        for t in NOISE_STEPS:
            ts = torch.full((len(x),), t)
            x_t = sched.add_noise(x, torch.randn(x.shape, generator=gen), ts)
            eps = sched.eps_from_output(pipe.model(x_t, ts, cond), ts, x_t)
            x0 = sched.predict_x0_batch(eps, ts, x_t)
            out[str(t)] = round(float((x0 - x)[:, 0].abs().mean()) / 2.0, 4)
    return out


def _reproduce(pipe: PCCDPipeline, requests: list[Request], targets: list) -> dict:
    """One sample per request, matched to its target crystal (the peers' ``get_rms_dist``)."""
    matcher = StructureMatcher(**MATCHER_TOLERANCES)
    samples = pipe.generate(requests, seed=0, batch_size=128)
    hits = plausible_hits = 0
    for sample, target in zip(samples, targets, strict=True):
        if sample.structure is None:
            continue
        # degenerate candidates can break the lattice search: no match
        with contextlib.suppress(Exception):
            if matcher.get_rms_dist(sample.structure, target) is not None:
                hits += 1
                plausible_hits += covalent_ratio(sample.structure) >= PLAUSIBLE_RATIO
    geo = geometry_summary([s.structure for s in samples])
    # a sample can reproduce its crystal by the matcher's tolerance and still have two atoms
    # too close: the second share says whether the fitted crystals are also good crystals
    return {
        "match_own": hits / len(targets),
        "match_own_and_plausible": plausible_hits / len(targets),
        **geo.to_dict(),
    }


def score(model_dir: Path | str, set_path: Path) -> dict:
    """CSP and de novo back to themselves for the set's first N crystals (all of the default),
    and CSP on N val formulas the set does not hold: does fitting the set teach the rule?"""
    pipe = PCCDPipeline.from_pretrained(model_dir)
    table = data.load(set_path).table
    table = table.subset(np.arange(min(N, len(table))))
    targets = [table.structure(i) for i in range(len(table))]
    row: dict = {"n": len(targets)}
    csp = [Request.parse(None, formula=cell_formula(s)) for s in targets]
    row["csp"] = _reproduce(pipe, csp, targets)
    denovo = [Request.parse(sorted({e.symbol for e in s.composition})) for s in targets]
    row["denovo"] = _reproduce(pipe, denovo, targets)
    val = data.load(VAL).table
    val = val.subset(np.sort(np.random.default_rng(0).choice(len(val), N, replace=False)))
    val_targets = [val.structure(i) for i in range(len(val))]
    val_csp = [Request.parse(None, formula=cell_formula(s)) for s in val_targets]
    row["val_csp"] = _reproduce(pipe, val_csp, val_targets)
    row["x0_error_frac"] = x0_error(pipe, table)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=str(ROOT / "runs" / "memorisation"))
    ap.add_argument("--option", action="append", default=[])
    ap.add_argument("--model-option", action="append", default=[])
    ap.add_argument("--score-only", default=None, help="score this run or model directory")
    ap.add_argument("--name", default="cpu")
    ap.add_argument("--precision", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--n", type=int, default=N, help="crystals in the set (the first 256 scored)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "memorisation.jsonl"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    one, repeated = make_set(work, args.n)
    run = Path(args.score_only) if args.score_only else work / args.name
    if not args.score_only:
        cmd = [sys.executable, "-m", "pccd.cli", "train", "--data", str(repeated),
               "--val", str(one), "--out", str(run), "--batch-size", "64",
               "--max-steps", str(args.steps),
               "--threads", str(args.threads), "--val-size", "64", "-q",
               "--precision", args.precision,
               "--option", "atom_order=file", "--option", "random_shift=false"]  # fmt: skip
        for o in args.option:
            cmd += ["--option", o]
        for o in args.model_option:
            cmd += ["--model-option", o]
        subprocess.run(cmd, check=True)
    model_dir = export_pretrained(run / "last.ckpt", run / "export") if run.is_dir() else run
    ckpt = torch.load(run / "last.ckpt", map_location="cpu", weights_only=False)
    row = {
        "name": args.name,
        "run": str(run),
        "steps": int(ckpt["global_step"]),
        "set_size": args.n,
        "precision": args.precision if not args.score_only else None,
        "config": ckpt["hyper_parameters"]["config"],
        **score(model_dir, one),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    print(json.dumps(row))
    with Path(args.out).open("a") as fh:
        fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
