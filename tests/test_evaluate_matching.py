"""Atom matching, lattice/coordinate errors and the paper's rates, on hand-made crystals."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from pccd.evaluate.matching import (
    circular_mean_difference,
    compare_structures,
    effective_rate,
    greedy_periodic_match,
    periodic_difference,
    plain_rate,
    whisker_bounds,
)
from tests.conftest import nacl, triclinic16, wurtzite


def shifted_permuted(s: Structure, shift, seed: int = 1) -> Structure:
    """The same crystal with its atoms listed in another order and its origin moved."""
    perm = np.random.default_rng(seed).permutation(len(s))
    return Structure(
        s.lattice, [s.species[i] for i in perm], (s.frac_coords[perm] + np.asarray(shift)) % 1.0
    )


def test_periodic_difference_wraps():
    assert periodic_difference(0.99, 0.01) == pytest.approx(-0.02)
    assert periodic_difference(0.01, 0.99) == pytest.approx(0.02)
    assert periodic_difference(0.5, 0.0) == pytest.approx(-0.5)  # [-0.5, 0.5)
    # on the circle, +0.45 and -0.45 average to 0.5 (not 0); 0.1 and 0.2 to 0.15
    d = np.array([[0.45, 0.1, 0.0], [-0.45, 0.2, 0.0]])
    assert circular_mean_difference(d) == pytest.approx([-0.5, 0.15, 0.0], abs=1e-9)


def test_identical_structures_match_with_zero_error():
    s = triclinic16()
    m = greedy_periodic_match(s, s.copy())
    assert m.element_mismatches == 0
    assert np.abs(m.frac_error).max() < 1e-12
    assert m.rms_distance < 1e-12
    assert sorted(m.pred_index.tolist()) == list(range(16))


@pytest.mark.parametrize("factory", [nacl, triclinic16, wurtzite])
def test_shifted_permuted_copy_has_zero_errors_after_alignment(factory):
    s = factory()
    other = shifted_permuted(s, [0.31, 0.72, 0.05])
    m = greedy_periodic_match(s, other)
    assert m.element_mismatches == 0
    assert np.abs(m.frac_error).max() < 1e-9
    assert m.rms_distance < 1e-9
    cmp = compare_structures(s, other)
    assert cmp.same_composition and np.abs(cmp.lattice_rel_error).max() < 1e-12


def test_without_alignment_the_origin_shift_is_the_error():
    s = triclinic16()
    other = Structure(s.lattice, s.species, (s.frac_coords + np.array([0.1, 0.0, 0.0])) % 1.0)
    m = greedy_periodic_match(s, other, align_origin=False)
    # every atom still finds its own image, displaced by exactly the shift
    assert m.frac_error[:, 0] == pytest.approx(np.full(16, 0.1), abs=1e-9)
    assert np.abs(m.frac_error[:, 1:]).max() < 1e-9


def test_small_displacements_are_measured_periodically():
    s = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0.995, 0.0, 0.0], [0.5, 0.5, 0.5]])
    moved = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0.005, 0.0, 0.0], [0.5, 0.5, 0.52]])
    m = greedy_periodic_match(s, moved, align_origin=False)
    assert m.frac_error[0] == pytest.approx([0.01, 0.0, 0.0], abs=1e-9)  # across 0/1
    assert m.frac_error[1] == pytest.approx([0.0, 0.0, 0.02], abs=1e-9)
    assert m.distance == pytest.approx([0.04, 0.08], abs=1e-9)


def test_strained_copy_gives_exact_relative_lattice_errors():
    s = wurtzite()
    strained = Structure(
        Lattice.from_parameters(*(np.array(s.lattice.abc) * [1.02, 1.0, 0.95]), *s.lattice.angles),
        s.species,
        s.frac_coords,
    )
    cmp = compare_structures(s, strained)
    assert cmp.lattice_rel_error == pytest.approx([0.02, 0.0, -0.05], abs=1e-9)
    assert cmp.match is not None and np.abs(cmp.match.frac_error).max() < 1e-9


def test_different_atom_counts_have_no_atom_matching():
    s = nacl()
    fewer = s.copy()
    fewer.remove_sites([0])
    cmp = compare_structures(s, fewer)
    assert (cmp.n_true, cmp.n_pred) == (8, 7)
    assert cmp.match is None and not cmp.same_composition


def test_elements_are_matched_before_distance():
    s = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    swapped_close = Structure(Lattice.cubic(5.0), ["Cl", "Na"], [[0.02, 0, 0], [0.5, 0.5, 0.5]])
    m = greedy_periodic_match(s, swapped_close, align_origin=False)
    # Na pairs with Na (far) rather than with the nearby Cl
    assert m.element_mismatches == 0
    assert m.pred_index.tolist() == [1, 0]


def test_effective_rate_on_a_hand_made_sample():
    # 1..8 plus an outlier: Q1 = 3, Q3 = 7, IQR = 4, whiskers [-3, 13] → 100 is outside
    values = np.array([1, 2, 3, 4, 5, 6, 7, 8, 100], dtype=float)
    assert whisker_bounds(values) == pytest.approx((-3.0, 13.0))
    assert effective_rate(values) == pytest.approx(8 / 9)
    assert effective_rate(np.array([1.0, 1.0, 1.0])) == 1.0  # IQR 0, all inside
    assert np.isnan(effective_rate(np.array([])))
    assert effective_rate(np.array([np.nan, 1.0, 2.0])) == 1.0  # NaN ignored


def test_plain_rate():
    assert plain_rate(np.array([0.01, -0.05, 0.051, -0.2]), 0.05) == pytest.approx(0.5)
    assert np.isnan(plain_rate(np.array([]), 0.05))
