"""Screening: energy scale, hull, relaxation, and the resumable directory screen.

The ASE EMT potential (Cu, Ag, Au, Al, Ni, Pd, Pt, H, C, N, O) stands in for an MLIP through
the ``module:factory`` path, so these tests need no model weights and run in seconds.
"""

from __future__ import annotations

import csv
import gzip

import numpy as np
import pandas as pd
import pytest
from ase.calculators.calculator import Calculator, all_changes
from pymatgen.core import Composition, Lattice, Structure

from pccd.experiments.discovery import BatchSettings, batch_statistics, draw_element_lists, pool
from pccd.mlip import MLIP, mp2020_corrected_energy
from pccd.screen.hull import ConvexHull, HullError
from pccd.screen.references import COLUMNS, ReferenceEnergies, subsystems
from pccd.screen.relax import RelaxationError, collapsed_pair, displacement_rmsd, relax
from pccd.screen.screening import ScreenSettings, screen_directory
from tests.conftest import nacl

EMT = "ase.calculators.emt:EMT"


def fcc(element: str, a: float) -> Structure:
    return Structure(Lattice.from_parameters(a / 2**0.5, a / 2**0.5, a / 2**0.5, 60, 60, 60),
                     [element], [[0, 0, 0]])  # fmt: skip


def l10_cuau() -> Structure:
    return Structure(Lattice.tetragonal(2.8, 3.7), ["Cu", "Au"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def write_table(path, rows) -> None:
    with gzip.open(path, "wt", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for mid, formula, e in rows:
            n = Composition(formula).num_atoms
            writer.writerow(dict(material_id=mid, formula=formula, nsites=n,
                                 energy_per_atom=e, error=""))  # fmt: skip


# ---- energy scale --------------------------------------------------------------------------
def test_mp2020_correction_applies_oxide_and_u_but_not_to_metals():
    metal = l10_cuau()
    assert mp2020_corrected_energy(metal, -10.0) == pytest.approx(-10.0)
    mgo = Structure(Lattice.cubic(4.2), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    # one O2- anion: MP2020 oxide correction is -0.687 eV per O atom
    assert mp2020_corrected_energy(mgo, -10.0) == pytest.approx(-10.687, abs=1e-3)
    feo = Structure(Lattice.cubic(4.3), ["Fe", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    corrected = mp2020_corrected_energy(feo, -10.0)
    assert corrected < -10.687 - 1.0  # plus the GGA+U correction for Fe in an oxide (-2.256)


def test_unknown_mlip_name_is_refused():
    with pytest.raises(ValueError, match="unknown MLIP"):
        MLIP("mace")


# ---- hull --------------------------------------------------------------------------------
def test_hull_known_answers(tmp_path):
    table = tmp_path / "t.csv.gz"
    write_table(table, [("m-1", "Li1", -2.0), ("m-2", "O2", -5.0), ("m-3", "Li2O1", -5.0)])
    hull = ConvexHull(ReferenceEnergies(MLIP(EMT), tables=[table]))
    # Li2O at -5 eV/atom lies below the Li–O tie line (-3 at x_O=1/3), so it is on the hull
    on = hull.e_above_hull(Composition("Li2O"), -5.0)
    assert on.e_above_hull == pytest.approx(0.0, abs=1e-9)
    above = hull.e_above_hull(Composition("Li2O"), -4.7)
    assert above.e_above_hull == pytest.approx(0.3)
    below = hull.e_above_hull(Composition("Li2O"), -5.2)
    assert below.e_above_hull == pytest.approx(-0.2)
    # LiO (x_O = 1/2): hull between Li2O (x=1/3, -5) and O2 (x=1, -5) is -5 eV/atom
    mid = hull.e_above_hull(Composition("LiO"), -4.9)
    assert mid.e_above_hull == pytest.approx(0.1)
    assert set(mid.decomposition) == {"Li2O (m-3)", "O2 (m-2)"}
    # leaving Li2O out moves the hull up to the tie line of the elements
    without = ConvexHull(hull.references, exclude=frozenset({"m-3"}))
    assert without.e_above_hull(Composition("Li2O"), -3.0).e_above_hull == pytest.approx(0.0)


def test_hull_without_an_element_reference_says_which(tmp_path):
    table = tmp_path / "t.csv.gz"
    write_table(table, [("m-1", "Li1", -2.0)])
    hull = ConvexHull(ReferenceEnergies(MLIP(EMT), tables=[table]))
    with pytest.raises(HullError, match="O in Li-O"):
        hull.e_above_hull(Composition("Li2O"), -5.0)


def test_subsystems_cover_all_subsets():
    assert subsystems(["O", "Mg", "Mn"]) == [
        "Mg", "Mn", "O", "Mg-Mn", "Mg-O", "Mn-O", "Mg-Mn-O",
    ]  # fmt: skip


# ---- relaxation ----------------------------------------------------------------------------
def test_displacement_rmsd_is_periodic():
    a = Structure(Lattice.cubic(4.0), ["Cu"], [[0.99, 0, 0]])
    b = Structure(Lattice.cubic(4.0), ["Cu"], [[0.01, 0, 0]])
    assert displacement_rmsd(a, b) == pytest.approx(0.08)


def test_relax_strained_copper_with_emt():
    strained = fcc("Cu", 3.9)  # EMT's Cu minimum is near 3.59 Å
    mlip = MLIP(EMT)
    before = mlip.energy_per_atom(strained)
    result = relax(strained, mlip, fmax=0.01)
    assert result.converged
    assert result.energy_per_atom < before
    assert result.volume_change < -0.1
    assert result.structure.lattice.abc[0] == pytest.approx(3.59 / 2**0.5, abs=0.03)


def test_relax_refuses_implausible_input_volume_with_reason():
    sparse = Structure(Lattice.cubic(12.0), ["Cu"], [[0, 0, 0]])  # 1,728 Å³ per atom
    with pytest.raises(RelaxationError, match=r"input volume 1728\.0"):
        relax(sparse, MLIP(EMT))


class Attract(Calculator):
    """A pathological potential: a spring pulls atoms 0 and 1 onto each other."""

    implemented_properties = ("energy", "free_energy", "forces")

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        d = self.atoms.positions[1] - self.atoms.positions[0]
        forces = np.zeros((len(self.atoms), 3))
        forces[0], forces[1] = 5.0 * d, -5.0 * d
        energy = 2.5 * float(d @ d)
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}


def test_relaxation_that_collapses_atoms_is_a_failure_not_a_candidate():
    pair = Structure(Lattice.cubic(6.0), ["Cu", "Cu"], [[0.5, 0.5, 0.5], [0.5, 0.5, 0.75]])
    assert collapsed_pair(pair) is None  # 1.5 Å apart: 0.54 × the Cu–Cu radii sum
    with pytest.raises(RelaxationError, match=r"collapsed: Cu–Cu 0\.0"):
        relax(pair, MLIP("tests.test_screen:Attract"), relax_cell=False)
    assert collapsed_pair(nacl()) is None


class Hole(Calculator):
    """A potential with a deep well everywhere: −1,000 eV per atom, no forces."""

    implemented_properties = ("energy", "free_energy", "forces")

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        energy = -1000.0 * len(self.atoms)
        forces = np.zeros((len(self.atoms), 3))
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}


def test_relaxed_energy_below_any_real_phase_is_a_failure():
    with pytest.raises(RelaxationError, match="MLIP hole"):
        relax(nacl(), MLIP("tests.test_screen:Hole"), relax_cell=False)
    from pccd.screen.screening import failure_kind

    assert failure_kind("relax_failed", "relaxation of X fell into an MLIP hole: …").startswith(
        "MLIP hole"
    )


# ---- batches -------------------------------------------------------------------------------
def test_pools_and_draws():
    p1, p2, p3 = pool(1), pool(2), pool(3)
    assert "Ar" not in p1 and "Tc" not in p1 and "Bi" in p1 and "U" not in p1
    assert "O" in p2 and "La" in p2 and "Fe" in p2 and "Na" not in p2
    assert "Ca" in p3 and "Sn" in p3 and len(p3) == 22
    settings = BatchSettings(pool=2, lists=30, seed=3)
    lists = draw_element_lists(settings)
    assert lists == draw_element_lists(settings)  # seeded
    assert len({tuple(x) for x in lists}) == 30
    assert all(1 <= len(x) <= 3 and set(x) <= set(p2) for x in lists)


def test_batch_statistics_known_answer():
    """Every share counts every crystal; failures are their own rows; over-relaxed apart."""
    ok = {"status": "ok", "reason": "", "unique": "True"}
    rows = [
        {**ok, "e_above_hull": "0.01", "novel": "True", "sun": "True"},
        {**ok, "e_above_hull": "0.2", "novel": "False", "sun": "False"},
        {**ok, "e_above_hull": "0.5", "novel": "True", "sun": "False"},
        {"e_above_hull": "", "novel": "", "sun": "", "status": "relax_failed",
         "reason": "relaxation of Cu2 collapsed: Cu–Cu 0.30 Å apart"},
        {"e_above_hull": "", "novel": "", "sun": "", "status": "relax_failed",
         "reason": "Cu1: input volume 250.0 Å³/atom is outside the plausible 2–200 Å³/atom"},
    ]  # fmt: skip
    stats = batch_statistics(rows)
    assert stats["generated"] == 5 and stats["with_e_hull"] == 3 and stats["failed"] == 2
    assert stats["failures"] == {"collapsed": 1, "implausible input volume": 1}
    assert stats["e_hull_below_0.25"] == pytest.approx(2 / 5)
    assert stats["e_hull_below_0.08"] == pytest.approx(1 / 5)
    assert stats["novel"] == pytest.approx(2 / 5)
    assert stats["sun"] == pytest.approx(1 / 5)
    relaxed = stats["of_relaxed"]
    assert relaxed["crystals"] == 3
    assert relaxed["e_hull_below_0.25"] == pytest.approx(2 / 3)
    assert relaxed["e_hull_below_0.08"] == pytest.approx(1 / 3)
    assert relaxed["novel"] == pytest.approx(2 / 3)


def test_summarize_screen_counts_every_crystal(tmp_path):
    import csv

    from pccd.screen.screening import SCREEN_COLUMNS, summarize_screen

    blank = dict.fromkeys(SCREEN_COLUMNS, "")
    rows = [
        {**blank, "id": "a", "status": "ok", "e_above_hull": "0.05", "novel": "True",
         "unique": "True", "sun": "True", "converged": "True", "seconds": "2.0"},
        {**blank, "id": "b", "status": "relax_failed", "seconds": "4.0",
         "reason": "relaxation of Cu2 collapsed: Cu–Cu 0.30 Å apart"},
        {**blank, "id": "c", "status": "unreadable", "reason": "unreadable CIF c.cif: bad"},
        {**blank, "id": "d", "status": "relax_failed", "reason": "relaxation of X blew up: ..."},
    ]  # fmt: skip
    path = tmp_path / "screen.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=SCREEN_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    summary = summarize_screen(path)
    assert summary["crystals"] == 4 and summary["with_e_hull"] == 1 and summary["failed"] == 3
    assert summary["failures"] == {"collapsed": 1, "unreadable CIF": 1, "blew up": 1}
    for key in ("e_hull_below_0.25", "e_hull_below_0.08", "novel", "unique", "sun"):
        assert summary[key] == pytest.approx(1 / 4), key
        assert summary["of_relaxed"][key] == pytest.approx(1.0), key
    assert summary["median_seconds_per_crystal"] == pytest.approx(3.0)  # failures timed too


# ---- the directory screen ------------------------------------------------------------------
def reference_csv(path) -> None:
    """A tiny known-materials database in the MP-20 layout."""
    known = {
        "mp-cu": fcc("Cu", 3.61),
        "mp-au": fcc("Au", 4.08),
        "mp-cuau": l10_cuau(),
    }
    rows = []
    for mid, s in known.items():
        els = sorted({e.symbol for e in s.composition.elements})
        rows.append(dict(material_id=mid, formation_energy_per_atom="", band_gap="",
                         pretty_formula=s.composition.reduced_formula, e_above_hull="",
                         elements=str(els), cif=s.to(fmt="cif"), **{"spacegroup.number": 1},
                         nsites=len(s), nelements=len(els)))  # fmt: skip
    pd.DataFrame(rows).to_csv(path)


def test_screen_directory_end_to_end_and_resume(tmp_path):
    ref = tmp_path / "ref.csv"
    reference_csv(ref)
    inputs = tmp_path / "in"
    inputs.mkdir()
    l10_cuau().to(filename=str(inputs / "a_known.cif"))
    fcc("Cu", 3.7).to(filename=str(inputs / "b_cu.cif"))
    fcc("Cu", 3.5).to(filename=str(inputs / "c_cu_again.cif"))  # relaxes to the same as b
    (inputs / "d_broken.cif").write_text("data_x\n_cell_length_a nonsense\n")
    settings = ScreenSettings(mlip=EMT, fmax=0.02, max_steps=300, reference=str(ref))
    out = tmp_path / "out"
    path = screen_directory(inputs, out, settings, limit=3)
    rows = {r["id"]: r for r in csv.DictReader(path.open())}
    assert set(rows) == {"a_known", "b_cu", "c_cu_again"}

    path = screen_directory(inputs, out, settings)  # resumes: only d is new
    rows = {r["id"]: r for r in csv.DictReader(path.open())}
    assert (
        rows["d_broken"]["status"] == "unreadable" and "d_broken.cif" in rows["d_broken"]["reason"]
    )
    assert rows["a_known"]["status"] == "ok"
    assert rows["a_known"]["novel"] == "False" and rows["a_known"]["known_id"] == "mp-cuau"
    # both Cu inputs relax onto fcc Cu: the first is known (not novel), the second a duplicate
    assert rows["b_cu"]["known_id"] == "mp-cu"
    assert rows["c_cu_again"]["unique"] == "False"
    assert rows["c_cu_again"]["duplicate_of"] == "b_cu"
    # elemental Cu relaxed with the same potential as its reference is on the hull
    assert float(rows["b_cu"]["e_above_hull"]) == pytest.approx(0.0, abs=2e-3)
    assert (out / "relaxed" / "b_cu.cif").exists()
    summary = (out / "summary.json").read_text()
    assert '"crystals": 4' in summary

    with pytest.raises(ValueError, match="other settings"):
        screen_directory(inputs, out, ScreenSettings(mlip=EMT, fmax=0.1, reference=str(ref)))


@pytest.mark.slow
def test_screen_with_two_workers_matches_one(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for k, a in enumerate((3.5, 3.7, 3.8)):
        fcc("Cu", a).to(filename=str(inputs / f"{k}.cif"))
    ref = tmp_path / "ref.csv"
    reference_csv(ref)
    settings = ScreenSettings(mlip=EMT, fmax=0.02, reference=str(ref))
    one = screen_directory(inputs, tmp_path / "one", settings)
    two = screen_directory(inputs, tmp_path / "two", settings, workers=2)
    e1 = {r["id"]: float(r["energy_per_atom"]) for r in csv.DictReader(one.open())}
    e2 = {r["id"]: float(r["energy_per_atom"]) for r in csv.DictReader(two.open())}
    assert e1.keys() == e2.keys()
    assert np.allclose([e1[k] for k in e1], [e2[k] for k in e1], atol=1e-6)


# ---- commands ------------------------------------------------------------------------------
def test_screen_and_phonons_commands(tmp_path, capsys):
    from pccd.cli import main

    inputs = tmp_path / "in"
    inputs.mkdir()
    fcc("Cu", 3.7).to(filename=str(inputs / "cu.cif"))
    (inputs / "bad.cif").write_text("not a cif")
    out = tmp_path / "screen"
    assert main(["screen", str(inputs), "--out", str(out), "--mlip", EMT, "--quiet"]) == 0
    printed = capsys.readouterr().out
    # EMT has no reference table, so cu.cif relaxes but gets no hull: a failure row too
    assert "2 crystals: 0 with an E_hull, 2 failed (unreadable CIF 1, no hull 1)" in printed
    assert "of all 2:" in printed and "of the 0 with an E_hull only:" in printed
    assert main(["phonons", str(inputs / "cu.cif"), "--mlip", EMT, "--min-length", "6",
                 "--out", str(tmp_path / "ph")]) == 0  # fmt: skip
    assert "dynamically stable" in capsys.readouterr().out
    assert (tmp_path / "ph" / "band_structure.png").stat().st_size > 0
    assert main(["phonons", str(inputs / "bad.cif"), "--mlip", EMT]) == 2
    assert "cannot read" in capsys.readouterr().err
