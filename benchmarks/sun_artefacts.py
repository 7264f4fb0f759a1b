"""Examine S.U.N. rows of a discovery batch that may be MLIP artefacts.

Regenerates the batch's raw crystals exactly as ``pccd batch`` drew them (same element lists,
seed, sampler and batch size), checks they are the crystals of the batch table (formula), then
for each chosen id reports the raw and relaxed geometry (smallest covalent ratio, volume per
atom, volume change) and relaxes it with each MLIP. E_hull is computed twice per MLIP: against
the shipped/cached reference table (single points at the DFT geometry, as the screen does) and
against the same reference phases *relaxed* with that MLIP (every phase of the chemical system
in ``--reference``), so an energy below the hull that only comes from the single-point shortcut
shows up. Raw and relaxed CIFs are written to ``--work``.

    PCCD_CACHE_DIR=.cache/pccd OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sun_artefacts.py \
        --pool 1 --ids 06,98 --mlips chgnet,7net-0
"""

from __future__ import annotations

import argparse
import csv
import json
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pool", type=int, default=1)
    p.add_argument("--ids", default="06,98", help="batch ids to examine")
    p.add_argument("--mlips", default="chgnet,7net-0")
    p.add_argument("--reference", default=str(ROOT.parent / "shared/data/mp_reference.csv.gz"))
    p.add_argument("--work", default=str(ROOT / "runs/sun_artefacts"))
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/sun_artefacts.json"))
    args = p.parse_args()

    import torch

    torch.set_num_threads(1)
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Structure

    from pccd.evaluate.geometry import covalent_ratio, space_group_number
    from pccd.experiments.discovery import BatchSettings, draw_element_lists
    from pccd.generator import Request, load_pretrained
    from pccd.mlip import MLIP
    from pccd.runs import generate_to_directory
    from pccd.screen.hull import ConvexHull
    from pccd.screen.references import (
        ReferenceEnergies,
        read_reference_structures,
        reference_chemsys,
        subsystems,
    )
    from pccd.screen.relax import RelaxationError, relax

    work = Path(args.work)
    ids = args.ids.split(",")
    table = ROOT / f"benchmarks/results/batches/batch{args.pool}/batch{args.pool}.csv"
    with table.open(newline="") as fh:
        batch_rows = {r["id"]: r for r in csv.DictReader(fh)}

    # the batch's raw crystals, as run_batch generates them
    settings = BatchSettings(pool=args.pool, lists=50, per_list=2, seed=0)
    lists = draw_element_lists(settings)
    requests = [Request.parse(els) for els in lists for _ in range(settings.per_list)]
    gen = work / f"generated{args.pool}"
    summary = generate_to_directory(
        load_pretrained(device="cpu"), requests, None, gen, batch_size=50, sampler="ddim",
        steps=None, seed=settings.seed,
    )  # fmt: skip
    with summary.open(newline="") as fh:
        generated = {r["id"]: r for r in csv.DictReader(fh)}
    with_formula = [i for i, r in batch_rows.items() if r["formula"]]
    same = sum(generated[i]["formula"] == batch_rows[i]["formula"] for i in with_formula)
    print(f"regenerated formulas equal to {table.name}: {same} of {len(with_formula)}")

    def geometry(s: Structure) -> dict[str, object]:
        return {
            "formula": s.composition.reduced_formula,
            "atoms": len(s),
            "volume_per_atom": round(s.volume / len(s), 3),
            "min_covalent_ratio": round(covalent_ratio(s), 3),
            "space_group": space_group_number(s),
        }

    result: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "pool": args.pool,
        "regenerated_formulas_matching": same,
        "crystals": {},
    }
    relaxed_refs: dict[tuple[str, str], list[tuple[str, object, float]]] = {}
    for ident in ids:
        row = generated[ident]
        raw = Structure.from_file(gen / Path(row["cif"]).name)
        raw.to(filename=str(work / f"{ident}_raw.cif"))
        elements = sorted({el.symbol for el in raw.composition.elements})
        entry: dict[str, object] = {
            "batch_row": batch_rows[ident],
            "raw": geometry(raw),
            "mlips": {},
        }
        names = args.mlips.split(",")
        first_relaxed = None
        # each MLIP relaxes the raw sample; the others also relax the first MLIP's result
        jobs = [(name, "raw") for name in names] + [(name, names[0]) for name in names[1:]]
        for name, start in jobs:
            label = name if start == "raw" else f"{name} from {start}-relaxed"
            source = raw if start == "raw" else first_relaxed
            if source is None:
                continue
            mlip = MLIP(name, device="cpu")
            energies = ReferenceEnergies(mlip)
            energies.ensure(elements, args.reference)
            hull = ConvexHull(energies)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    r = relax(source, mlip)
                except RelaxationError as exc:
                    entry["mlips"][label] = {"failed": str(exc)}
                    print(ident, label, "failed:", exc)
                    continue
            if name == names[0] and start == "raw":
                first_relaxed = r.structure
            suffix = name if start == "raw" else f"{name}_from_{start}"
            r.structure.to(filename=str(work / f"{ident}_relaxed_{suffix}.cif"))
            single = hull.e_above_hull(r.structure.composition, r.energy_per_atom)
            # every reference phase of the system, relaxed with this MLIP
            key = ("-".join(elements), name)
            if key not in relaxed_refs:
                wanted = set(subsystems(elements))
                mids = {m for m, c in reference_chemsys(args.reference).items() if c in wanted}
                refs = []
                for mid, s in read_reference_structures(args.reference, ids=mids):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        try:
                            rr = relax(s, mlip)
                        except RelaxationError as exc:
                            print("reference", mid, "not relaxed:", exc)
                            continue
                    refs.append((mid, s.composition, rr.energy_per_atom))
                relaxed_refs[key] = refs
            refs = relaxed_refs[key]
            pd_entries = [PDEntry(c, e * c.num_atoms, name=m) for m, c, e in refs]
            pd = PhaseDiagram(pd_entries)
            cand = PDEntry(r.structure.composition, r.energy_per_atom * len(r.structure))
            decomp, e_relaxed = pd.get_decomp_and_e_above_hull(cand, allow_negative=True)
            lowest = sorted(refs, key=lambda t: t[2])[:3]
            entry["mlips"][label] = {
                "start": start,
                "relaxed": geometry(r.structure),
                "volume_change": round(r.volume_change, 4),
                "converged": r.converged,
                "steps": r.steps,
                "energy_per_atom": round(r.energy_per_atom, 4),
                "e_hull_single_point_refs": round(single.e_above_hull, 4),
                "decomposition_single_point_refs": single.decomposition_str,
                "e_hull_relaxed_refs": round(float(e_relaxed), 4),
                "decomposition_relaxed_refs": " + ".join(
                    f"{f:.3f} {e.composition.reduced_formula} ({e.name})" for e, f in decomp.items()
                ),
                "relaxed_reference_phases": len(refs),
                "lowest_relaxed_references": [
                    {"id": m, "formula": c.reduced_formula, "energy_per_atom": round(e, 4)}
                    for m, c, e in lowest
                ],
                "seconds": round(r.seconds, 1),
            }
            print(ident, label, json.dumps(entry["mlips"][label]))
        entry["raw"]["cif"] = f"{ident}_raw.cif"
        result["crystals"][ident] = entry
        print(ident, "raw", json.dumps(entry["raw"]))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("wrote", args.out, f"({time.process_time():.0f} s CPU)")


if __name__ == "__main__":
    main()
