"""Reference-energy tables: chunked (batched) single points, failures, resume.

ASE's EMT stands in for an MLIP (``module:factory``); CHGNet and SevenNet-0 appear in slow tests
that compare the batched energies with the one-structure-at-a-time ones.
"""

from __future__ import annotations

import csv
import gzip
import math

import pytest
from ase.calculators.emt import EMT as _EMT
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from pccd.mlip import MLIP, MLIPError
from pccd.screen.batched import batch_evaluator
from pccd.screen.references import COLUMNS, compute_reference_energies, shipped_table
from tests.conftest import nacl, silicon

EMT = "ase.calculators.emt:EMT"


def fcc(element: str, a: float) -> Structure:
    return Structure(Lattice.from_parameters(a / 2**0.5, a / 2**0.5, a / 2**0.5, 60, 60, 60),
                     [element], [[0, 0, 0]])  # fmt: skip


def emt_items() -> list[tuple[str, Structure]]:
    """Six EMT structures; NaCl (no EMT parameters for Na, Cl) sits in the middle."""
    cuau = Structure(Lattice.tetragonal(2.8, 3.7), ["Cu", "Au"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return [
        ("mp-1", fcc("Cu", 3.6)),
        ("mp-2", fcc("Au", 4.1)),
        ("mp-3", cuau),
        ("mp-4", nacl()),
        ("mp-5", fcc("Ni", 3.5)),
        ("mp-6", fcc("Al", 4.05)),
    ]


def rows_of(path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def one_by_one(mlip: MLIP, structure: Structure) -> float | str:
    """What the unbatched path gives: the energy per atom, or the error message."""
    try:
        return mlip.energy_per_atom(structure)
    except MLIPError as exc:
        return str(exc)


class PickyEMT(_EMT):
    """EMT that refuses Na as it is attached, the way SevenNet refuses an unknown element."""

    def set_atoms(self, atoms):
        if "Na" in atoms.get_chemical_symbols():
            raise ValueError("Model do not know atomic number: 11")


class NaNOnNickel(_EMT):
    """EMT that answers NaN for any structure with nickel."""

    def calculate(self, atoms=None, *args, **kwargs):
        super().calculate(atoms, *args, **kwargs)
        if "Ni" in self.atoms.get_chemical_symbols():
            self.results["energy"] = self.results["free_energy"] = math.nan


@pytest.mark.parametrize("chunk_size", [1, 4, 16])
def test_chunked_rows_are_those_of_the_one_by_one_path(tmp_path, chunk_size):
    mlip = MLIP(EMT)
    out = tmp_path / "refs.csv"
    seen: list[int] = []
    assert compute_reference_energies(mlip, emt_items(), out, seen.append, chunk_size) == 6
    assert seen == [1, 2, 3, 4, 5, 6]
    rows = rows_of(out)
    assert list(rows[0]) == COLUMNS
    assert [r["material_id"] for r in rows] == [f"mp-{k}" for k in range(1, 7)]
    for row, (mid, structure) in zip(rows, emt_items(), strict=True):
        if mid == "mp-4":  # NaCl: its own reason, the chunk-mates unaffected
            assert row["energy_per_atom"] == ""
            assert row["error"] == f"{EMT} cannot evaluate Na4 Cl4: No EMT-potential for Na"
            continue
        want = mlip.energy_per_atom(structure)
        assert row["error"] == ""
        assert float(row["energy_per_atom"]) == pytest.approx(want, abs=1e-5)
    assert sum(bool(r["energy_per_atom"]) for r in rows) == 5


def test_a_chunk_the_batched_call_refuses_is_evaluated_one_by_one(tmp_path):
    mlip = MLIP("tests.test_references:PickyEMT")
    batch = [AseAtomsAdaptor.get_atoms(s) for _, s in emt_items()]
    with pytest.raises(ValueError):  # the batched call fails for the whole chunk
        batch_evaluator(mlip, forces=False)(batch)
    out = tmp_path / "refs.csv"
    assert compute_reference_energies(mlip, emt_items(), out, chunk_size=16) == 6
    rows = {r["material_id"]: r for r in rows_of(out)}
    assert rows["mp-4"]["energy_per_atom"] == ""
    assert rows["mp-4"]["error"] == (
        "tests.test_references:PickyEMT cannot evaluate Na4 Cl4: "
        "Model do not know atomic number: 11"
    )
    emt = MLIP(EMT)
    for mid, structure in emt_items():
        if mid != "mp-4":
            got = float(rows[mid]["energy_per_atom"])
            assert got == pytest.approx(emt.energy_per_atom(structure), abs=1e-5)


def test_a_non_finite_energy_is_an_error_row(tmp_path):
    mlip = MLIP("tests.test_references:NaNOnNickel")
    out = tmp_path / "refs.csv"
    compute_reference_energies(mlip, emt_items(), out, chunk_size=16)
    rows = {r["material_id"]: r for r in rows_of(out)}
    assert rows["mp-5"]["energy_per_atom"] == ""
    assert rows["mp-5"]["error"] == one_by_one(mlip, fcc("Ni", 3.5))
    assert "non-finite energy for Ni1" in rows["mp-5"]["error"]
    assert rows["mp-6"]["energy_per_atom"] and rows["mp-1"]["energy_per_atom"]


def test_resume_skips_done_ids_and_keeps_finished_chunks(tmp_path):
    mlip = MLIP(EMT)
    out = tmp_path / "refs.csv"
    items = emt_items()

    def interrupted():
        yield from items[:5]
        raise KeyboardInterrupt  # the build is stopped while a third chunk fills

    with pytest.raises(KeyboardInterrupt):
        compute_reference_energies(mlip, interrupted(), out, chunk_size=2)
    assert [r["material_id"] for r in rows_of(out)] == ["mp-1", "mp-2", "mp-3", "mp-4"]
    assert compute_reference_energies(mlip, items + items[:2], out, chunk_size=2) == 2
    rows = rows_of(out)
    assert [r["material_id"] for r in rows] == [f"mp-{k}" for k in range(1, 7)]
    assert compute_reference_energies(mlip, items, out) == 0  # nothing left
    assert len(rows_of(out)) == 6
    with pytest.raises(ValueError, match="chunk size"):
        compute_reference_energies(mlip, items, out, chunk_size=0)


# ---- real MLIPs ------------------------------------------------------------------------------
def small_crystals() -> list[tuple[str, Structure]]:
    """A handful of small crystals; MnO gets the MP2020 U correction, Po is unknown to 7net-0."""
    rocksalt = Lattice.cubic(4.45)
    mno = Structure.from_spacegroup("Fm-3m", rocksalt, ["Mn", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    alo2 = Structure(Lattice.hexagonal(2.9, 4.6), ["Al", "O", "O"],
                     [[0, 0, 0], [1 / 3, 2 / 3, 0.3], [2 / 3, 1 / 3, 0.7]])  # fmt: skip
    return [
        ("si", silicon()),
        ("nacl", nacl()),
        ("mno", mno),
        ("po", Structure(Lattice.cubic(3.36), ["Po"], [[0, 0, 0]])),
        ("cu", fcc("Cu", 3.6)),
        ("alo2", alo2),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["chgnet", "7net-0"])
def test_batched_mlip_energies_match_one_by_one(tmp_path, name):
    pytest.importorskip("chgnet" if name == "chgnet" else "sevenn")
    import torch

    torch.set_num_threads(1)
    mlip = MLIP(name)
    out = tmp_path / "refs.csv"
    assert compute_reference_energies(mlip, small_crystals(), out, chunk_size=8) == 6
    rows = {r["material_id"]: r for r in rows_of(out)}
    for mid, structure in small_crystals():
        if name == "7net-0" and mid == "po":  # fails the batch; found by the one-by-one pass
            assert rows[mid]["energy_per_atom"] == ""
            assert rows[mid]["error"].startswith("7net-0 cannot evaluate Po1: ")
            assert "atomic number: 84" in rows[mid]["error"]
            continue
        want = mlip.energy_per_atom(structure)
        assert rows[mid]["error"] == "", (mid, rows[mid]["error"])
        assert float(rows[mid]["energy_per_atom"]) == pytest.approx(want, abs=1e-4), mid


@pytest.mark.parametrize("name", ["chgnet", "7net-0"])
def test_shipped_tables_cover_the_reference_set(name):
    """Both built-in MLIPs screen without computing references: their tables ship, cover every
    ≤ 3-element structure of mp_reference (79,804) with few errors, and sit on one energy scale
    (MP2020-compatible: elemental phases near MP's, e.g. bcc Fe around -8.3 eV/atom)."""
    with gzip.open(shipped_table(name), "rt") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 79_804
    energies = {r["material_id"]: float(r["energy_per_atom"]) for r in rows if r["energy_per_atom"]}
    assert len(energies) >= 0.999 * len(rows)  # 0 errors in both builds
    assert all(math.isfinite(e) for e in energies.values())
    assert -9.0 < energies["mp-13"] < -7.5  # bcc Fe
