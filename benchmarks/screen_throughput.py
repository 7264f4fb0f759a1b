"""Screening throughput on this machine: crystals/min and seconds per crystal, A/B of engines.

Usage:
    python benchmarks/screen_throughput.py [--n 40] [--mlips chgnet,7net-0] [--workers 2]
    python benchmarks/screen_throughput.py --mlips chgnet --engines ase:2,batched:1:2,batched:2

Generates ``n`` crystals with the shipped model for element lists drawn from the val split
(seeded), then times ``screen_directory`` end to end (relaxation, hull from the shipped
reference table, novelty against mp_reference, writing) for each MLIP and each engine run on
the *same* CIFs. An engine run is ``ENGINE[:WORKERS[:THREADS]]``: ``ase`` is per-crystal ASE
FIRE, ``batched`` the lockstep batch of ``pccd.screen.batched`` (``--relax-batch-size``);
``dask-ase`` / ``dask-batched`` run the same engines as tasks on a local Dask cluster of
WORKERS single-thread worker processes (started before the clock, like ``dask worker``);
WORKERS defaults to ``--workers``, THREADS (torch threads per worker) to 1.

Every crystal counts: crystals/min is over all rows (failures included), and the seconds
medians are given over all crystals with a time (failures carry their wall time) and over the
relaxed ones. With the batched engine a crystal's seconds are its share of the batch's wall
time (each MLIP call split by atom count). Each later engine run of an MLIP is compared with
its first: MAE of the final energy over crystals both relaxed, and agreement of the failure
classification (ok / implausible volume / blow-up / collapse / non-finite / MLIP error).

A MLIP without a shipped reference table is timed without the hull (its first use of a
chemical system would compute references, which is a one-off cost, not throughput). Run on a
quiet machine.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from pccd.generator import Request
from pccd.pipeline import PCCDPipeline
from pccd.screen.references import shipped_table
from pccd.screen.screening import ScreenSettings, failure_kind, screen_directory

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
ENGINES = ("ase", "batched", "dask-ase", "dask-batched")


def failure_class(row: dict[str, str]) -> str:
    """ok, or why the crystal got no relaxed energy (:func:`pccd.screen.screening.failure_kind`,
    the labels the screen's own summaries use)."""
    if row["status"] != "relax_failed" and row["energy_per_atom"]:
        return "ok"
    return failure_kind(row["status"], row["reason"])


def parse_run(text: str, workers: int) -> tuple[str, int, int]:
    parts = text.split(":")
    engine = parts[0]
    if engine not in ENGINES or len(parts) > 3:
        raise SystemExit(f"engine run {text!r}: use ENGINE[:WORKERS[:THREADS]], ENGINE {ENGINES}")
    return (
        engine,
        int(parts[1]) if len(parts) > 1 else workers,
        int(parts[2]) if len(parts) > 2 else 1,
    )


def compare(a: list[dict[str, str]], b: list[dict[str, str]]) -> dict[str, object]:
    """Final-energy agreement and failure-classification agreement of two runs."""
    ra, rb = {r["id"]: r for r in a}, {r["id"]: r for r in b}
    ids = sorted(ra.keys() & rb.keys())
    both = [i for i in ids if ra[i]["energy_per_atom"] and rb[i]["energy_per_atom"]]
    diffs = [abs(float(ra[i]["energy_per_atom"]) - float(rb[i]["energy_per_atom"])) for i in both]
    classes = {i: (failure_class(ra[i]), failure_class(rb[i])) for i in ids}
    disagree = {i: c for i, c in classes.items() if c[0] != c[1]}
    return {
        "crystals_compared": len(ids),
        "relaxed_in_both": len(both),
        "energy_mae_mev_per_atom": 1000 * statistics.fmean(diffs) if diffs else None,
        "energy_max_abs_mev_per_atom": 1000 * max(diffs) if diffs else None,
        "classification_agreement": 1 - len(disagree) / len(ids) if ids else None,
        "classification_disagreements": {i: list(c) for i, c in disagree.items()},
    }


def summarize(rows: list[dict[str, str]], wall: float) -> dict[str, object]:
    timed = [float(r["seconds"]) for r in rows if r["seconds"]]
    relaxed = [(int(r["atoms"]), float(r["seconds"])) for r in rows if r["energy_per_atom"]]
    mid = [s for a, s in relaxed if 10 <= a <= 14]
    classes: dict[str, int] = {}
    for r in rows:
        classes[failure_class(r)] = classes.get(failure_class(r), 0) + 1
    return {
        "crystals": len(rows),
        "relaxed": len(relaxed),
        "wall_seconds": wall,
        "crystals_per_minute": 60 * len(rows) / wall,
        "median_seconds_per_crystal": statistics.median(timed) if timed else None,
        "crystals_with_seconds": len(timed),
        "median_seconds_per_relaxation": statistics.median(s for _, s in relaxed)
        if relaxed
        else None,
        "median_seconds_10_to_14_atoms": statistics.median(mid) if mid else None,
        "n_10_to_14_atoms": len(mid),
        "converged": sum(r["converged"] == "True" for r in rows),
        "status": {k: sum(r["status"] == k for r in rows) for k in {r["status"] for r in rows}},
        "classes": classes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--mlips", default="chgnet,7net-0")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--engines", default="ase", help="comma list of ENGINE[:WORKERS[:THREADS]] (default ase)"
    )
    ap.add_argument("--relax-batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference", default=str(DATA / "mp_reference.csv.gz"))
    ap.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "screen_throughput.json")
    )
    args = ap.parse_args()
    runs = [parse_run(t, args.workers) for t in args.engines.split(",")]
    val = pd.read_csv(DATA / "mp_pccd" / "val.csv.gz", index_col=0)
    rng = np.random.default_rng(args.seed)
    picks = rng.choice(len(val), size=args.n, replace=False)
    lists = [val.iloc[int(i)]["elements"] for i in picks]
    requests = [Request.parse([e.strip(" '") for e in els.strip("[]").split(",")]) for els in lists]
    result: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": vars(args),
        "per_mlip": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        gen = Path(tmp) / "generated"
        gen.mkdir()
        pipe = PCCDPipeline.from_pretrained()
        for batch in pipe.iter_generate(requests, seed=args.seed, batch_size=args.n):
            for s in batch:
                if s.structure is not None:
                    s.structure.to(filename=str(gen / f"{s.index:03d}.cif"))
        result["generated_cifs"] = len(list(gen.glob("*.cif")))
        for name in args.mlips.split(","):
            has_table = shipped_table(name).exists()
            per_run: dict[str, object] = {}
            result["per_mlip"][name] = per_run  # type: ignore[index]
            first: list[dict[str, str]] | None = None
            for engine, workers, threads in runs:
                label = f"{engine}:{workers}:{threads}"
                settings = ScreenSettings(
                    mlip=name,
                    reference=args.reference if has_table else None,
                    relax_engine=engine.removeprefix("dask-"),
                )
                out = Path(tmp) / f"{name.replace(':', '_')}-{engine}-{workers}-{threads}"
                with contextlib.ExitStack() as stack:
                    dask = None
                    if engine.startswith("dask-"):
                        from distributed import LocalCluster

                        cluster = stack.enter_context(
                            LocalCluster(n_workers=workers, threads_per_worker=1,
                                         processes=True, dashboard_address=None)
                        )  # fmt: skip
                        dask = cluster.scheduler_address
                    t0 = time.perf_counter()
                    path = screen_directory(
                        gen, out, settings, workers=1 if dask else workers,
                        threads_per_worker=threads, relax_batch_size=args.relax_batch_size,
                        dask=dask,
                    )  # fmt: skip
                    wall = time.perf_counter() - t0
                with path.open(newline="") as fh:
                    rows = list(csv.DictReader(fh))
                entry: dict[str, object] = {
                    "engine": engine,
                    "workers": workers,
                    "threads_per_worker": threads,
                    "hull_included": has_table,
                    **summarize(rows, wall),
                }
                if first is None:
                    first = rows
                else:
                    entry["versus_first"] = compare(first, rows)
                entry["rows"] = [
                    {k: r[k] for k in ("id", "atoms", "status", "energy_per_atom", "steps",
                                       "seconds")} | {"class": failure_class(r)}
                    for r in rows
                ]  # fmt: skip
                per_run[label] = entry
                shown = {k: v for k, v in entry.items() if k != "rows"}
                print(name, label, json.dumps(shown), flush=True)
                Path(args.out).write_text(json.dumps(result, indent=2))  # kept if a run stops


if __name__ == "__main__":
    main()
