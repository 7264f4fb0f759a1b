"""Reference-phase energies for convex hulls, precomputed once per MLIP.

Relaxing every competing phase of a new chemical system on demand takes hours, so the energies
of all known structures with ≤ 3 elements (everything a ≤ 3-element hull can need) are computed
once per MLIP as single points at their DFT geometry, and the compact table ships with the
package (``pccd/weights/references/<mlip>.csv.gz``). Energies for systems the table does not
cover (a custom MLIP, a reference database of your own) are computed on first use and kept in
the user cache, so only the first screen of a chemical system pays for them.
"""

from __future__ import annotations

import csv
import gzip
import math
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations, islice
from pathlib import Path

import pandas as pd
from pymatgen.core import Composition, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from pccd.data import read_table
from pccd.mlip import EVAL_ERRORS, MLIP, MLIPError
from pccd.screen.batched import Evaluator, batch_evaluator

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "weights" / "references"
COLUMNS = ["material_id", "formula", "nsites", "energy_per_atom", "error"]
#: structures per batched MLIP call when computing reference energies
DEFAULT_CHUNK_SIZE = 16


def chemsys(elements: Iterable[str]) -> str:
    """Canonical chemical-system key, e.g. ``"Mg-Mn-O"``."""
    return "-".join(sorted(set(elements)))


def subsystems(elements: Iterable[str]) -> list[str]:
    """All chemical systems a hull over ``elements`` needs (every non-empty subset)."""
    els = sorted(set(elements))
    return [chemsys(c) for r in range(1, len(els) + 1) for c in combinations(els, r)]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def shipped_table(mlip_name: str) -> Path:
    """Where the precomputed table for ``mlip_name`` lives inside the package."""
    return SHIPPED_DIR / f"{_safe(mlip_name)}.csv.gz"


def cache_table(mlip_name: str) -> Path:
    """Where energies computed on demand are kept (``$PCCD_CACHE_DIR`` or ~/.cache/pccd)."""
    root = Path(os.environ.get("PCCD_CACHE_DIR", Path.home() / ".cache" / "pccd"))
    return root / "references" / f"{_safe(mlip_name)}.csv"


@dataclass(frozen=True)
class ReferenceEnergy:
    """One known phase: its composition and MLIP energy per atom (MP2020 scale)."""

    material_id: str
    composition: Composition
    energy_per_atom: float


def read_reference_structures(
    path: str | Path, max_elements: int = 3, ids: set[str] | None = None
) -> Iterator[tuple[str, Structure]]:
    """Yield (material_id, Structure) from a reference CSV (the MP-20 column layout).

    Only rows with ≤ ``max_elements`` elements (and in ``ids``, if given) are parsed.
    """
    frame = _reference_frame(str(path))
    frame = frame[frame["nelements"] <= max_elements]
    if ids is not None:
        frame = frame[frame["material_id"].astype(str).isin(ids)]
    for material_id, cif in zip(frame["material_id"], frame["cif"], strict=True):
        yield str(material_id), Structure.from_str(cif, fmt="cif")


@lru_cache(maxsize=2)
def _reference_frame(path: str) -> pd.DataFrame:
    """The reference CSV, read once per process (on-demand systems each need a slice)."""
    return read_table(path, index_col=0)


@lru_cache(maxsize=4)
def reference_chemsys(path: str, max_elements: int = 3) -> dict[str, str]:
    """material_id -> chemical system for a reference CSV, without parsing structures."""
    frame = read_table(path, usecols=["material_id", "elements", "nelements"])
    frame = frame[frame["nelements"] <= max_elements]
    out = {}
    for material_id, elements in zip(frame["material_id"], frame["elements"], strict=True):
        out[str(material_id)] = chemsys(re.findall(r"[A-Z][a-z]?", elements))
    return out


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as fh:
        return list(csv.DictReader(fh))


def compute_reference_energies(
    mlip: MLIP,
    structures: Iterable[tuple[str, Structure]],
    out: str | Path,
    progress: Callable[[int], None] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> int:
    """Append single-point energies for ``structures`` to the CSV ``out``; skip ids already in it.

    Structures are evaluated ``chunk_size`` at a time through the MLIP's batched evaluation
    (:func:`pccd.screen.batched.batch_evaluator`: one graph for CHGNet and SevenNet-0), and the
    raw energies get the same MP2020 treatment as :meth:`MLIP.energy_per_atom`. The rows of a
    chunk are flushed as soon as it is done, so an interrupted build resumes where it stopped.
    A structure the MLIP cannot evaluate gets a row with the reason and no energy; its
    chunk-mates are not affected.

    Returns:
        the number of new rows written.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk size must be ≥ 1, got {chunk_size}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {row["material_id"] for row in _read_rows(out)}
    new = not out.exists() or out.stat().st_size == 0
    evaluate = batch_evaluator(mlip, stress=False, forces=False)
    written = 0

    def todo() -> Iterator[tuple[str, Structure]]:
        for material_id, structure in structures:
            if material_id not in done:
                done.add(material_id)  # an id listed twice is computed once
                yield material_id, structure

    with out.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
            fh.flush()
        pending = todo()
        while chunk := list(islice(pending, chunk_size)):
            energies = _chunk_energies(mlip, evaluate, [s for _, s in chunk])
            for (material_id, structure), energy in zip(chunk, energies, strict=True):
                row = {
                    "material_id": material_id,
                    "formula": structure.composition.formula.replace(" ", ""),
                    "nsites": len(structure),
                    "energy_per_atom": "",
                    "error": "",
                }
                if isinstance(energy, MLIPError):
                    row["error"] = str(energy)
                else:
                    row["energy_per_atom"] = f"{energy:.5f}"
                writer.writerow(row)
            fh.flush()
            for _ in chunk:
                written += 1
                if progress is not None:
                    progress(written)
    return written


def _chunk_energies(
    mlip: MLIP, evaluate: Evaluator, structures: list[Structure]
) -> list[float | MLIPError]:
    """MP2020-scale energies per atom of ``structures`` (one batched call), or each one's error.

    When the batched call fails as a whole (one structure with an element the model does not
    know spoils the graph), the chunk is evaluated structure by structure the unbatched way, so
    only the culprit gets an error, with the reason :meth:`MLIP.energy_per_atom` gives.
    """
    try:
        results = evaluate([AseAtomsAdaptor.get_atoms(s) for s in structures])
    except EVAL_ERRORS:
        return [_energy_or_error(mlip, s) for s in structures]
    out: list[float | MLIPError] = []
    for structure, res in zip(structures, results, strict=True):
        if isinstance(res, BaseException):  # per-structure failure of a calculator
            out.append(mlip.cannot_evaluate(structure, res))
            continue
        energy = float(res["energy"])
        if not math.isfinite(energy):
            out.append(
                MLIPError(f"{mlip.name} returned a non-finite energy for {structure.formula}")
            )
            continue
        try:
            out.append(mlip.energy_per_atom(structure, raw_energy=energy))
        except MLIPError as exc:  # MP2020 compatibility rejected the entry
            out.append(exc)
    return out


def _energy_or_error(mlip: MLIP, structure: Structure) -> float | MLIPError:
    """One structure through :meth:`MLIP.energy_per_atom`; its error returned, not raised."""
    try:
        return mlip.energy_per_atom(structure)
    except (MLIPError, *EVAL_ERRORS) as exc:  # SevenNet refuses unknown elements on attach
        return mlip.cannot_evaluate(structure, exc)


def finalize_table(partial: str | Path, out: str | Path) -> int:
    """Write a finished build as the sorted, gzipped table that ships; returns its row count."""
    rows = _read_rows(Path(partial))
    rows.sort(key=lambda r: (int(r["material_id"].split("-")[-1]), r["material_id"]))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(out, "wt", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


class ReferenceEnergies:
    """Known phases with MLIP energies, indexed by chemical system.

    Loads the shipped table for ``mlip.name`` (if any) plus the user cache. ``ensure`` fills in
    missing systems from a reference CSV, computing and caching their energies.
    """

    def __init__(self, mlip: MLIP, tables: Iterable[str | Path] | None = None):
        self.mlip = mlip
        if tables is None:
            tables = [shipped_table(mlip.name), cache_table(mlip.name)]
        self.by_chemsys: dict[str, list[ReferenceEnergy]] = defaultdict(list)
        self.failed: dict[str, str] = {}
        self._known: set[str] = set()
        for table in tables:
            self._add_rows(_read_rows(Path(table)))

    def _add_rows(self, rows: Iterable[dict[str, str]]) -> None:
        for row in rows:
            if row["material_id"] in self._known:
                continue
            self._known.add(row["material_id"])
            if not row["energy_per_atom"]:
                self.failed[row["material_id"]] = row["error"]
                continue
            comp = Composition(row["formula"])
            self.by_chemsys[chemsys(el.symbol for el in comp.elements)].append(
                ReferenceEnergy(row["material_id"], comp, float(row["energy_per_atom"]))
            )

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_chemsys.values())

    def __contains__(self, material_id: str) -> bool:
        return material_id in self._known

    def for_system(self, elements: Iterable[str]) -> list[ReferenceEnergy]:
        """Every reference phase whose elements are a subset of ``elements``."""
        return [ref for key in subsystems(elements) for ref in self.by_chemsys.get(key, [])]

    def ensure(self, elements: Iterable[str], reference_csv: str | Path) -> int:
        """Compute (and cache) energies of reference phases of this system not yet known.

        Returns:
            how many were computed; 0 when the shipped table already covers the system.
        """
        wanted = set(subsystems(elements))
        systems = reference_chemsys(str(reference_csv))
        missing = {mid for mid, key in systems.items() if key in wanted and mid not in self}
        if not missing:
            return 0
        structures = read_reference_structures(reference_csv, ids=missing)
        path = cache_table(self.mlip.name)
        before = len(_read_rows(path))
        compute_reference_energies(self.mlip, structures, path)
        rows = _read_rows(path)
        self._add_rows(rows[before:])
        return len(rows) - before
