"""S.U.N. crystals found per CPU-hour, generate + screen end to end (issue 14, item 5).

Usage:
    python benchmarks/sun_per_cpu_hour.py [--pool 3] [--lists 50] [--per-list 2] [--threads 1]

The figure a user with a CPU budget cares about: how many stable (MLIP E_hull ≤ 0.1 eV/atom),
unique and novel crystals one CPU-hour buys. Each arm is one fresh ``pccd batch`` run (the
paper's discovery protocol: element lists drawn from a pool, shipped model, DDIM 20, CHGNet
relaxation, E_hull against the shipped reference table, novelty against ``mp_reference``),
timed by wall clock and by the CPU seconds of the child process (user + system, from
``getrusage``), so the figure does not depend on what else shares the machine as much as wall
time does. Every generated crystal is in the denominator; failures are counted with reasons.

``--model`` picks the model (any family; default ``pccd-cpu``); compare models by running
each into its own ``--out`` and ``--work`` back to back on the same quiet machine.

Arms: ``ase`` is the screen as it was before issue 14 (per-crystal ASE FIRE), ``batched`` the
default since (lockstep FIRE, one MLIP call per step for many crystals). Both draw the same
element lists and crystals (same seed), so they differ only in how the relaxations run.
A partial run of an arm cannot be timed, so it is started over; a finished arm is not rerun.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from pccd.experiments.discovery import batch_statistics

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "data" / "mp_reference.csv.gz"
ARMS = {"ase": ["--relax-engine", "ase"], "batched": ["--relax-engine", "batched"]}


def child_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_arm(arm: str, args: argparse.Namespace) -> dict:
    out = args.work / arm
    if out.exists():
        shutil.rmtree(out)  # a partial run's time means nothing
    pccd = str(Path(sys.executable).with_name("pccd"))
    cmd = [
        pccd, "batch", "--pool", str(args.pool), "--lists", str(args.lists),
        "--per-list", str(args.per_list), "--out", str(out), "--reference", str(REFERENCE),
        "--workers", "1", "--threads", str(args.threads), "--seed", "0", "--quiet", *ARMS[arm],
        "--model", args.model,
    ]  # fmt: skip
    cpu0, t0 = child_cpu_seconds(), time.perf_counter()
    subprocess.run(cmd, check=True)
    wall, cpu = time.perf_counter() - t0, child_cpu_seconds() - cpu0
    with (out / f"batch{args.pool}.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    stats = batch_statistics(rows)
    n = stats["generated"]
    sun = sum(r.get("sun") == "True" for r in rows)
    return {
        "arm": arm,
        "command": " ".join(cmd[1:]),
        "generated": n,
        "with_e_hull": stats["with_e_hull"],
        "failed": stats["failed"],
        "failures": stats["failures"],
        "sun": sun,
        "sun_share": stats["sun"],
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "sun_per_cpu_hour": round(sun / (cpu / 3600), 2),
        "sun_per_wall_hour": round(sun / (wall / 3600), 2),
        "crystals_per_cpu_hour": round(n / (cpu / 3600), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=3, choices=(1, 2, 3))
    ap.add_argument("--lists", type=int, default=50)
    ap.add_argument("--per-list", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="pccd-cpu", help="shipped model name or directory")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--note", default="", help="what else ran on the machine")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "sun_per_cpu_hour")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "sun_per_cpu_hour.json"
    )
    args = ap.parse_args()
    result = json.loads(args.out.read_text()) if args.out.exists() else {"arms": {}}
    for arm in args.arms:
        if arm in result["arms"]:
            continue
        result["arms"][arm] = run_arm(arm, args)
        result.update(
            date=datetime.now(UTC).isoformat(timespec="seconds"),
            settings={k: v for k, v in vars(args).items() if k not in ("work", "out", "arms")},
        )
        args.out.write_text(json.dumps(result, indent=1) + "\n")  # each arm kept as it ends
        print(json.dumps(result["arms"][arm]), flush=True)


if __name__ == "__main__":
    main()
