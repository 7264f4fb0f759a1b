"""CSP distances: zero for the same crystal, positive or missing (with a reason) otherwise."""

from __future__ import annotations

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes
from pymatgen.core import Lattice, Structure

from pccd.evaluate.csp_distances import (
    METRICS,
    CSPDistances,
    graph_edit_distance,
    neighbour_graph,
    superpose_distance,
)
from tests.conftest import triclinic16
from tests.test_evaluate_matching import shifted_permuted


def zinc_blende() -> Structure:
    return Structure.from_spacegroup(
        "F-43m", Lattice.cubic(5.41), ["Zn", "S"], [[0, 0, 0], [0.25, 0.25, 0.25]]
    ).get_primitive_structure()


def wurtzite_zns() -> Structure:
    return Structure.from_spacegroup(
        "P6_3mc",
        Lattice.hexagonal(3.82, 6.26),
        ["Zn", "S"],
        [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.375]],
    )


@pytest.fixture(scope="module")
def calc():
    """One calculator for the module: CHGNet and the featurizers load once (~1 s)."""
    return CSPDistances(ged_timeout=1.0)


@pytest.mark.slow
def test_identical_and_shifted_permuted_copies_are_at_zero_distance(calc):
    s = triclinic16()
    for other in (s.copy(), shifted_permuted(s, [0.3, 0.7, 0.1])):
        d = calc(other, s)
        assert set(d) == set(METRICS)
        assert all(not v.missing for v in d.values()), {k: v.reason for k, v in d.items()}
        assert d["energy"].value == pytest.approx(0.0, abs=1e-4)  # float32 network
        for name in ("ofm", "crystalnn", "superpose", "rms", "rms_anonymous"):
            assert d[name].value == pytest.approx(0.0, abs=1e-6), name
        assert d["graph_edit"].value == 0.0 and d["graph_edit"].note == ""


def test_superpose_ignores_rotation_of_the_cartesian_frame():
    s = triclinic16()
    theta = np.radians(33.0)
    rot = np.array(
        [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]
    )
    rotated = Structure(Lattice(s.lattice.matrix @ rot.T), s.species, s.frac_coords)
    assert superpose_distance(rotated, s) == pytest.approx(0.0, abs=1e-9)
    moved = s.copy()
    moved.translate_sites([0], [0.0, 0.0, 0.5 / s.lattice.c], frac_coords=True)  # one atom, 0.5 Å
    # Kabsch can absorb a little of one atom's move by shifting the centroid: 0 < RMSD ≤ 0.5/√16
    assert 0.0 < superpose_distance(moved, s) <= 0.5 / 4 + 1e-9


def test_a_different_polymorph_is_far_or_missing_with_reasons(calc):
    zb, wz = zinc_blende(), wurtzite_zns()
    d = calc(wz, zb)
    assert d["rms"].missing and "no StructureMatcher match" in d["rms"].reason
    assert d["rms_anonymous"].missing and d["rms_anonymous"].reason
    # a 4-atom and a 2-atom cell: no one-to-one superposition exists
    assert d["superpose"].missing and "compositions differ" in d["superpose"].reason
    for name in ("energy", "ofm", "crystalnn"):
        assert not d[name].missing and d[name].value > 1e-4, name
    assert d["graph_edit"].value is not None and d["graph_edit"].value > 0


def test_a_failed_decode_makes_every_metric_missing_with_a_reason(calc):
    d = calc(None, triclinic16())
    assert all(v.missing and v.value is None and v.reason for v in d.values())


class BrokenCalculator(Calculator):
    """An ASE calculator that fails the way an MLIP does on an odd structure."""

    implemented_properties = ("energy",)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        raise RuntimeError("no neighbours within the cutoff")


def test_a_metric_that_raises_is_missing_with_the_error_never_zero():
    calc = CSPDistances(["energy", "rms"], mlip=f"{__name__}:BrokenCalculator")
    d = calc(triclinic16(), triclinic16())
    assert d["energy"].value is None
    # the MLIP wrapper names what failed (MLIPError) and keeps the calculator's message
    assert "MLIPError" in d["energy"].reason and "no neighbours" in d["energy"].reason
    assert d["rms"].value == pytest.approx(0.0, abs=1e-9)
    assert list(d) == ["energy", "rms"]


def test_unknown_metric_is_rejected():
    with pytest.raises(ValueError, match="unknown distance"):
        CSPDistances(["energy", "vibes"])


def test_neighbour_graph_and_time_limited_edit_distance():
    zb = zinc_blende()  # Zn-S 2.34 Å: each atom bonds to the other (4 images, one edge)
    g = neighbour_graph(zb, 2.5)
    assert g.number_of_nodes() == 2 and g.number_of_edges() == 1
    assert neighbour_graph(zb, 2.0).number_of_edges() == 0
    a, b = triclinic16(0), triclinic16(1)
    value, exact = graph_edit_distance(a, b, timeout=0.2)
    assert value > 0 and exact is False  # 16-node search cannot finish in 0.2 s: upper bound
