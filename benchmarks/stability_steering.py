"""Does asking for "stable" make more stable crystals? Issue 15, item 3, through the real screen.

Usage:
    python benchmarks/stability_steering.py --model DIR [--n 100] [--guidance 1]
        [--split ../shared/data/mp_pccd_bulk/val.csv.gz] [--threads 2]

For each setting (no stability condition, ``--stability stable``, ``--stability unstable``) one
``pccd generate --elements-from SPLIT -n N --seed 0`` run draws the same element lists with the
same starting noise (the settings differ only in the condition), and ``pccd screen`` relaxes
every crystal with CHGNet and computes its E_hull against the shipped reference table (MLIP
proxy). Reported per setting, every crystal in the denominator (a failed decode or relaxation
is not below the threshold): the share below 0.08 eV/atom (the issue's figure), below
0.25 eV/atom, the failures by kind, and the raw samples' plausible share. The label the model
learned is "E_hull < 0.08 eV/atom" from the splits' recomputed 2018 energies
(:data:`pccd.conditioning.STABLE_E_ABOVE_HULL`). Ship the condition only if "stable" beats the
unconditioned setting by more than the noise: the settings share element lists and starting
noise, so crystal i of one setting pairs with crystal i of another, and the difference of the
shares is reported with its paired standard error.

Both commands resume, so an interrupted run continues; rows go to
``benchmarks/results/stability_steering_<model>.json`` when every setting is done.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from pccd.conditioning import STABLE_E_ABOVE_HULL
from pccd.screen.screening import share_statistics

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "none": [],
    "stable": ["--stability", "stable"],
    "unstable": ["--stability", "unstable"],
}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def below_by_index(rows: list[dict[str, str]], n: int, threshold: float) -> np.ndarray:
    """1 where crystal i (screen ids start with the request index) relaxed below ``threshold``.

    Crystals without a screen row (failed decode) or without an E_hull (failed relaxation)
    count as 0, so every requested crystal is in the denominator.
    """
    below = np.zeros(n)
    for r in rows:
        if r.get("e_above_hull"):
            below[int(r["id"].split("_")[0])] = float(r["e_above_hull"]) < threshold
    return below


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean of a − b over paired crystals and its standard error (n − 1 in the variance)."""
    d = a - b
    return {"difference": float(d.mean()), "standard_error": float(d.std(ddof=1) / np.sqrt(len(d)))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--split", default=str(ROOT.parent / "shared/data/mp_pccd_bulk/val.csv.gz"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "stability_steering")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    pccd = str(Path(sys.executable).with_name("pccd"))
    name = Path(args.model).name if Path(args.model).exists() else args.model
    work = args.work / f"{name}-g{args.guidance:g}-n{args.n}"
    result: dict = {"model": args.model, "settings": {}}
    below: dict[str, np.ndarray] = {}
    for setting, flags in SETTINGS.items():
        gen, screen = work / setting, work / f"{setting}-screen"
        guidance = ["--guidance", str(args.guidance)] if args.guidance != 1.0 else []
        if guidance and flags:
            guidance += ["--guide", "stability"]  # amplify only the asked label
        subprocess.run(
            [pccd, "generate", "--model", args.model, "--elements-from", args.split,
             "-n", str(args.n), "--seed", "0", "--threads", str(args.threads), "--quiet",
             "--out", str(gen), *flags, *guidance],
            check=True,
        )  # fmt: skip
        subprocess.run(
            [pccd, "screen", str(gen), "--out", str(screen), "--threads", str(args.threads),
             "--quiet"],
            check=True,
        )  # fmt: skip
        rows = read_csv(screen / "screen.csv")  # one row per CIF: failed decodes have none
        raw = read_csv(gen / "summary.csv")  # one row per requested crystal
        n = len(raw)
        below[setting] = below_by_index(rows, n, STABLE_E_ABOVE_HULL)
        result["settings"][setting] = {
            "crystals": n,
            "decoded": len(rows),
            "below_0.08": float(below[setting].mean()),
            "below_0.25": float(below_by_index(rows, n, 0.25).mean()),
            "with_e_hull": sum(bool(r.get("e_above_hull")) for r in rows),
            "failures": share_statistics(rows)["failures"],
            "raw_plausible": sum(r.get("plausible") == "1" for r in raw) / n,
        }
        print(setting, json.dumps(result["settings"][setting]), flush=True)
    for asked in ("stable", "unstable"):
        result[f"{asked}_minus_none_below_0.08"] = paired_difference(below[asked], below["none"])
    result.update(
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        run={"n": args.n, "guidance": args.guidance, "split": args.split, "seed": 0},
    )
    out = args.out or ROOT / "benchmarks" / "results" / f"stability_steering_{name}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
