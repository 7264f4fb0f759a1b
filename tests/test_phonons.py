"""Phonon stability check: supercell sizing, verdicts with a cheap EMT calculator, plotting.

EMT (shipped with ASE) stands in for the MLIP so the tests need no model weights: it finds fcc
Cu stable and bcc Cu unstable at N (as DFT does), which gives one case of each verdict.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes
from pymatgen.core import Lattice, Structure

from pccd.mlip import MLIP
from pccd.screen.phonons import (
    PhononError,
    PhononResult,
    _counted_minimum,
    compute_phonons,
    plot_band_structure,
    supercell_matrix,
)

EMT = "ase.calculators.emt:EMT"


class NaNCalculator(Calculator):
    """A broken potential: finite energy, NaN forces."""

    implemented_properties = ("energy", "forces")

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = {"energy": 0.0, "forces": np.full((len(self.atoms), 3), np.nan)}


def nan_calculator() -> NaNCalculator:
    """Factory for ``MLIP("tests.test_phonons:nan_calculator")``."""
    return NaNCalculator()


def fcc_cu() -> Structure:
    """Conventional fcc Cu near the EMT lattice constant (4 atoms; 1 in the primitive cell)."""
    return Structure(
        Lattice.cubic(3.59), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    )


def bcc_cu() -> Structure:
    """bcc Cu: a saddle point of the Bain path, unstable at N."""
    return Structure(Lattice.cubic(2.85), ["Cu", "Cu"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def widths(matrix: np.ndarray) -> np.ndarray:
    a, b, c = matrix
    volume = abs(np.dot(a, np.cross(b, c)))
    return volume / np.linalg.norm([np.cross(b, c), np.cross(c, a), np.cross(a, b)], axis=1)


@pytest.fixture(scope="module")
def stable_cu() -> PhononResult:
    return compute_phonons(fcc_cu(), MLIP(EMT))


def test_supercell_matrix_cubic():
    assert np.array_equal(supercell_matrix(Lattice.cubic(3.0)), np.diag([4, 4, 4]))
    assert np.array_equal(supercell_matrix(Lattice.cubic(5.0)), np.diag([2, 2, 2]))  # exact fit
    assert np.array_equal(supercell_matrix(Lattice.tetragonal(4.0, 12.0)), np.diag([3, 3, 1]))
    assert np.array_equal(supercell_matrix(Lattice.cubic(3.0), min_length=6.5), np.diag([3] * 3))


def test_supercell_matrix_uses_perpendicular_width_in_skewed_cells():
    # primitive fcc, a = 3.6: lattice vectors are 2.55 Å long but (111) planes are a/√3 = 2.08 Å
    # apart, so 4 repeats (10.2 Å along the vectors) would leave an 8.3 Å wide supercell
    fcc = Lattice([[0, 1.8, 1.8], [1.8, 0, 1.8], [1.8, 1.8, 0]])
    assert np.array_equal(supercell_matrix(fcc), np.diag([5, 5, 5]))
    # monoclinic β = 120°: the width along a is 3.6 sin 120° = 3.12 Å, so 4 repeats, not 3
    mono = Lattice.monoclinic(3.6, 5.0, 6.0, 120.0)
    assert np.array_equal(supercell_matrix(mono), np.diag([4, 2, 2]))
    for lattice in (fcc, mono, Lattice.from_parameters(4.1, 5.3, 6.2, 70, 100, 115)):
        n = np.diag(supercell_matrix(lattice))
        assert (widths(np.diag(n) @ lattice.matrix) >= 10.0).all()
        for i in range(3):  # and it is the smallest diagonal choice
            smaller = n.copy()
            smaller[i] -= 1
            if smaller[i] > 0:
                assert widths(np.diag(smaller) @ lattice.matrix)[i] < 10.0


def test_fcc_cu_is_dynamically_stable(stable_cu):
    result = stable_cu
    assert result.stable
    assert result.verdict == "dynamically stable"
    assert result.formula == "Cu"
    assert result.supercell == (5, 5, 5)  # on the one-atom primitive cell
    assert result.n_atoms_supercell == 125
    assert result.n_displacements == 1
    assert result.min_frequency_off_gamma_thz > 0.1
    assert abs(result.min_frequency_thz) < 0.05  # acoustic modes at Γ
    freqs = np.vstack(result.band_structure.frequencies)
    assert 6.0 < freqs.max() < 10.0  # EMT Cu: ~8 THz (experiment 7.2)
    labels = result.band_structure.tick_labels
    assert labels[0] == "Γ" and "X" in labels and "L" in labels
    data = json.loads(json.dumps(result.to_dict()))
    assert data["verdict"] == "dynamically stable"
    assert data["supercell"] == [5, 5, 5]


def test_bcc_cu_is_dynamically_unstable():
    result = compute_phonons(bcc_cu(), MLIP(EMT))
    assert not result.stable
    assert result.verdict.startswith("dynamically unstable: imaginary mode of -")
    assert result.min_frequency_off_gamma_thz < -0.5
    assert result.min_frequency_thz <= result.min_frequency_off_gamma_thz
    q = np.asarray(result.q_min_off_gamma)
    assert np.linalg.norm(q - np.rint(q)) > 0.05  # the instability is away from Γ


def test_only_acoustic_modes_near_gamma_are_ignored():
    qpoints = np.array([[0.0, 0.0, 0.0], [0.02, 0.0, 0.0], [0.5, 0.0, 0.0]])
    freqs = np.array(
        [
            [-0.3, 0.0, 0.0, 5.0, 5.0, 6.0],  # Γ: acoustic noise
            [-0.4, 0.1, 0.1, 5.0, 5.0, 6.0],  # next to Γ: acoustic noise
            [1.0, 2.0, 2.0, 4.0, 4.0, 7.0],
        ]
    )
    assert _counted_minimum(qpoints, freqs, 0.05) == (1.0, pytest.approx(qpoints[2]))
    soft_polar = freqs.copy()
    soft_polar[0, 3] = -2.0  # an imaginary optical mode at Γ is an instability
    minimum, q = _counted_minimum(qpoints, soft_polar, 0.05)
    assert minimum == -2.0 and np.allclose(q, 0.0)
    far = freqs.copy()
    far[2, 0] = -0.3  # acoustic away from Γ counts
    assert _counted_minimum(qpoints, far, 0.05)[0] == -0.3
    # (1, 0, 0) is Γ too
    assert _counted_minimum(qpoints + np.array([1, 0, 0]), freqs, 0.05)[0] == 1.0


def test_non_finite_forces_raise_phonon_error():
    with pytest.raises(PhononError, match=r"non-finite forces for Cu"):
        compute_phonons(fcc_cu(), MLIP("tests.test_phonons:nan_calculator"))


def test_disordered_structure_raises_phonon_error():
    disordered = Structure(Lattice.cubic(3.6), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]])
    with pytest.raises(PhononError, match="ordered"):
        compute_phonons(disordered, MLIP(EMT))


def test_plot_band_structure_writes_png(stable_cu, tmp_path):
    path = plot_band_structure(stable_cu, tmp_path / "plots" / "cu_phonons.png")
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_chgnet_mgo_is_dynamically_stable():
    """Real CHGNet on rock-salt MgO (8 Å supercell widths would take ~12 s; 6 Å takes ~4 s)."""
    pytest.importorskip("chgnet")
    mgo = Structure(
        Lattice.from_parameters(2.98, 2.98, 2.98, 60, 60, 60),
        ["Mg", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5]],
    )
    result = compute_phonons(mgo, MLIP("chgnet"), min_length=6.0)
    assert result.supercell == (3, 3, 3)
    assert result.verdict == "dynamically stable"
    assert result.min_frequency_off_gamma_thz > 0.3
