"""How far can a band-gap condition move the instrument's insulator share at all?

Usage:
    python benchmarks/band_gap_ceiling.py [--lists 20] [--seed 0] [--max-atoms 16]
        [--steering benchmarks/results/band_gap_steering_pccd-cpu.jsonl]

Why: the steering benchmark (``band_gap_steering.py``) reads samples with the shipped band-gap
instrument, which sees the composition only, and a request fixes the element list. So a model
can move the reading only by choosing another stoichiometry of the same elements. This script
measures the ceiling that sets, on the steering benchmark's own 20 val element lists
(``draw_element_lists(lists, seed)``), in two ways:

- *any stoichiometry*: every composition with each listed element at least once and at most
  ``--max-atoms`` atoms in the cell (what the representation can express). A list can move by
  100 points if at least one such composition reads as an insulator and one as a metal, else 0.
- *known stoichiometries*: only the compositions the train split holds for exactly that element
  set (what the model has seen), with how many of them read as insulators, and the share of
  those train crystals that MP labels as gap >= 0.1 eV where a gap is known.

The ceiling of the mean Δ over lists is the mean of the per-list ceilings. A perfect model
would put all "4 eV" samples on insulating compositions and all "0 eV" samples on metallic
ones, so these are upper bounds, not predictions. With ``--steering`` (a steering benchmark's
jsonl on the same lists), each guidance's measured Δ (4 eV − 0 eV, every sample counted) is set
beside the ceiling, over all lists and over the lists that can move. Output:
``results/band_gap_ceiling.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pymatgen.core import Composition
from pymatgen.core.periodic_table import Element

from pccd import data
from pccd.evaluate import band_gap as bg
from pccd.evaluate.fingerprints import magpie_fingerprint

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
VAL = ROOT.parent / "shared" / "data" / "mp_pccd" / "val.csv.gz"
TRAIN = ROOT.parent / "shared" / "data" / "mp_pccd" / "train.csv.gz"


def stoichiometries(n_elements: int, max_atoms: int) -> list[tuple[int, ...]]:
    """Reduced count vectors (each element ≥ 1, total ≤ ``max_atoms``), each reduced
    composition once: 2:2 is 1:1, because the instrument reads fractions only."""
    seen: set[tuple[int, ...]] = set()
    for counts in itertools.product(range(1, max_atoms + 1), repeat=n_elements):
        if sum(counts) > max_atoms:
            continue
        g = np.gcd.reduce(counts)
        seen.add(tuple(int(c // g) for c in counts))
    return sorted(seen)


def read(instrument: bg.BandGapModel, comps: list[Composition]) -> np.ndarray:
    """p_insulator per composition (composition features only, as the shipped instrument)."""
    x = np.stack([magpie_fingerprint(c) for c in comps])
    return instrument.predict_features(x)[1]


def measured_deltas(steering: Path, movable: set[str]) -> list[dict]:
    """Per guidance (and guided-conditions choice) of a steering jsonl: mean Δ insulator share
    (4 eV − 0 eV, points) over all its lists and over the ``movable`` ones."""
    by_setting: dict[tuple, dict[float, dict[str, float]]] = {}
    for line in steering.read_text().splitlines():
        row = json.loads(line)
        s = row["setting"]
        guide = tuple(row["settings"].get("guide") or ())  # a run-wide setting, not per row
        key = (s["guidance"], guide, s.get("repulsion"))
        by_setting.setdefault(key, {})[s["band_gap"]] = {
            p["elements"]: p["insulator_share_of_all"] for p in row["per_list"]
        }
    out = []
    for (guidance, guide, repulsion), shares in sorted(by_setting.items()):
        if 0.0 not in shares or 4.0 not in shares:
            continue
        lo, hi = shares[0.0], shares[4.0]
        deltas = {e: 100 * (hi[e] - lo[e]) for e in lo}
        moving = [d for e, d in deltas.items() if e in movable]
        out.append(
            {
                "guidance": guidance,
                "guide": list(guide) or None,
                "repulsion": repulsion,
                "delta_all_lists_points": round(float(np.mean(list(deltas.values()))), 2),
                "delta_movable_lists_points": round(float(np.mean(moving)), 2) if moving else None,
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lists", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-atoms", type=int, default=16)
    ap.add_argument("--steering", help="a band_gap_steering jsonl on the same lists")
    ap.add_argument("--out", default=str(RESULTS / "band_gap_ceiling.json"))
    args = ap.parse_args()

    instrument = bg.load_shipped()
    if instrument.features != "composition":
        raise SystemExit(
            f"error: the ceiling assumes a composition-only instrument, got {instrument.features}"
        )
    val = data.load(VAL).table
    train = data.load(TRAIN).table
    group, lists = train.element_list_groups()
    by_set: dict[tuple[int, ...], list[int]] = {}
    for i, g in enumerate(group.tolist()):
        by_set.setdefault(lists[g], []).append(i)

    rows = []
    for zs in val.draw_element_lists(args.lists, args.seed):
        elements = [Element.from_Z(z) for z in zs]
        counts = stoichiometries(len(elements), args.max_atoms)
        comps = [Composition(dict(zip(elements, c, strict=True))) for c in counts]
        p_any = read(instrument, comps)
        ins_any = p_any >= bg.INSULATOR_PROBABILITY
        known = by_set.get(tuple(zs), [])
        known_comps = sorted({train.structure(i).composition.reduced_formula for i in known})
        p_known = read(instrument, [Composition(f) for f in known_comps]) if known_comps else []
        ins_known = np.asarray(p_known) >= bg.INSULATOR_PROBABILITY
        gaps = train.band_gap[known] if known else np.array([])
        gaps = gaps[np.isfinite(gaps)]
        rows.append(
            {
                "elements": "-".join(e.symbol for e in elements),
                "stoichiometries": len(comps),
                "insulating_stoichiometries": int(ins_any.sum()),
                "ceiling_any_points": 100.0 if 0 < ins_any.sum() < len(comps) else 0.0,
                "train_crystals": len(known),
                "train_compositions": len(known_comps),
                "insulating_train_compositions": int(ins_known.sum()),
                "ceiling_known_points": 100.0 if 0 < ins_known.sum() < len(known_comps) else 0.0,
                "train_crystals_with_gap": len(gaps),
                "train_share_gap_ge_0.1": (
                    round(float((gaps >= 0.1).mean()), 4) if len(gaps) else None
                ),
            }
        )
        print(json.dumps(rows[-1]))

    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.node(),
        "settings": vars(args),
        "instrument": instrument.fingerprint,
        "mean_ceiling_any_points": float(np.mean([r["ceiling_any_points"] for r in rows])),
        "mean_ceiling_known_points": float(np.mean([r["ceiling_known_points"] for r in rows])),
        "lists_with_no_insulating_stoichiometry": sum(
            r["insulating_stoichiometries"] == 0 for r in rows
        ),
        "lists_with_no_metallic_stoichiometry": sum(
            r["insulating_stoichiometries"] == r["stoichiometries"] for r in rows
        ),
        "rows": rows,
    }
    if args.steering:
        movable = {r["elements"] for r in rows if r["ceiling_any_points"] == 100.0}
        result["measured"] = measured_deltas(Path(args.steering), movable)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()
