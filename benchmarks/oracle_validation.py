"""Validate the MLIP oracle on known materials before trusting it on generated ones.

Usage:
    python benchmarks/oracle_validation.py --mlip chgnet [--n 200] [--n-refs 100] [--threads 1]

Two measurements, per MLIP:

1. ``n`` val-split materials with MP (2018) formation energies, relaxed from their DFT
   structure: RMSD and volume change of the MLIP-relaxed vs the DFT structure, and E_hull from
   the MLIP against the reference table *with the material itself left out* (otherwise it would
   sit on its own hull by construction). Compared with the data's ``e_above_hull`` (recomputed
   from MP 2018 formation energies, approximate): MAE, and for the materials the data puts on
   the hull, the share the MLIP puts below 0.08 eV/atom.
2. ``n_refs`` reference phases: how far the single point at the DFT geometry (what the shipped
   table holds) is from a full relaxation, in eV/atom. A large gap would bias every hull.

Per-material rows stream to ``benchmarks/results/oracle_<mlip>.csv`` (a rerun resumes); the
summary goes to ``oracle_<mlip>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.core import Structure

from pccd.mlip import MLIP, MLIPError
from pccd.outputs import ResultTable
from pccd.screen.hull import ConvexHull, HullError
from pccd.screen.references import ReferenceEnergies
from pccd.screen.relax import RelaxationError, relax

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
COLUMNS = ("material_id", "kind", "formula", "nsites", "data_e_hull", "e_single", "e_relaxed",
           "e_hull_single", "e_hull_relaxed", "rmsd", "volume_change", "converged", "seconds",
           "error")  # fmt: skip


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    arr = np.asarray(values)
    return {"n": len(arr), "mean": float(arr.mean()), "median": float(np.median(arr)),
            "p90": float(np.quantile(arr, 0.9)), "max": float(arr.max())}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mlip", default="chgnet")
    ap.add_argument("--n", type=int, default=200, help="val materials")
    ap.add_argument("--n-refs", type=int, default=100, help="reference phases relaxed")
    ap.add_argument("--fmax", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--val", default=str(DATA / "mp_pccd" / "val.csv.gz"))
    ap.add_argument("--reference", default=str(DATA / "mp_reference.csv.gz"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    results = ROOT / "benchmarks" / "results"
    table = ResultTable(results / f"oracle_{_safe(args.mlip)}.csv", COLUMNS, key="material_id")
    mlip = MLIP(args.mlip)
    energies = ReferenceEnergies(mlip)

    val = pd.read_csv(args.val, index_col=0)
    val = val[val["formation_energy_per_atom"].notna()].sample(args.n, random_state=args.seed)
    refs = pd.read_csv(args.reference, index_col=0)
    refs = refs[(refs["nelements"] <= 3) & (refs["nsites"] <= 24)]
    refs = refs[~refs["material_id"].isin(val["material_id"])]
    refs = refs.sample(args.n_refs, random_state=args.seed)
    jobs = [("val", r) for r in val.itertuples()] + [("reference", r) for r in refs.itertuples()]
    for k, (kind, row) in enumerate(jobs):
        if row.material_id in table:
            continue
        s = Structure.from_str(row.cif, fmt="cif")
        out: dict[str, object] = {"material_id": row.material_id, "kind": kind,
                                  "formula": s.composition.reduced_formula, "nsites": len(s),
                                  "data_e_hull": row.e_above_hull}  # fmt: skip
        try:
            elements = [e.symbol for e in s.composition.elements]
            energies.ensure(elements, args.reference)
            e_single = mlip.energy_per_atom(s)
            t0 = time.perf_counter()
            r = relax(s, mlip, fmax=args.fmax, max_steps=500)
            out.update(e_single=e_single, e_relaxed=r.energy_per_atom, rmsd=r.rmsd,
                       volume_change=r.volume_change, converged=r.converged,
                       seconds=time.perf_counter() - t0)  # fmt: skip
            if kind == "val":
                hull = ConvexHull(energies, exclude=frozenset({row.material_id}))
                out["e_hull_single"] = hull.e_above_hull(s.composition, e_single).e_above_hull
                out["e_hull_relaxed"] = hull.e_above_hull(
                    s.composition, r.energy_per_atom
                ).e_above_hull
        except (MLIPError, RelaxationError, HullError) as exc:
            out["error"] = str(exc)
        table.append(out)
        print(f"{k + 1}/{len(jobs)} {kind} {out['formula']} {out.get('e_hull_relaxed', '')}",
              flush=True)  # fmt: skip

    rows = list(table.rows.values())
    val_rows = [r for r in rows if r["kind"] == "val" and r["e_hull_relaxed"]]
    ref_rows = [r for r in rows if r["kind"] == "reference" and r["e_relaxed"]]

    def col(rs, c):
        return [float(r[c]) for r in rs]

    on_hull = [r for r in val_rows if float(r["data_e_hull"]) <= 1e-6]
    err = np.abs(np.array(col(val_rows, "e_hull_relaxed")) - np.array(col(val_rows, "data_e_hull")))
    summary = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "mlip": args.mlip,
        "settings": vars(args),
        "val_materials": len(val_rows),
        "val_failed": sum(1 for r in rows if r["kind"] == "val" and r["error"]),
        "rmsd_relaxed_vs_dft_A": _stats(col(val_rows, "rmsd")),
        "abs_volume_change": _stats([abs(v) for v in col(val_rows, "volume_change")]),
        "e_hull_mae_vs_data": float(err.mean()) if len(err) else None,
        "on_hull_materials": len(on_hull),
        "on_hull_e_hull": _stats(col(on_hull, "e_hull_relaxed")),
        "on_hull_share_below_0.08": (
            sum(float(r["e_hull_relaxed"]) < 0.08 for r in on_hull) / len(on_hull)
            if on_hull
            else None
        ),
        "share_within_0.08_of_data": float((err < 0.08).mean()) if len(err) else None,
        "reference_single_minus_relaxed_eV_per_atom": _stats(
            [
                a - b
                for a, b in zip(col(ref_rows, "e_single"), col(ref_rows, "e_relaxed"), strict=True)
            ]
        ),
        "median_relax_seconds": statistics.median(col(val_rows + ref_rows, "seconds"))
        if val_rows + ref_rows
        else None,
    }
    (results / f"oracle_{_safe(args.mlip)}.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


def _safe(name: str) -> str:
    return name.replace(":", "_").replace("/", "_")


if __name__ == "__main__":
    main()
