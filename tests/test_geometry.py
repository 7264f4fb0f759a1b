"""The geometry test of raw samples: smallest covalent ratio, plausibility, symmetry."""

from __future__ import annotations

import math

import pytest
from ase.data import covalent_radii
from pymatgen.core import Lattice, Structure

from pccd.evaluate.geometry import (
    covalent_ratio,
    describe_structure,
    geometry_summary,
    space_group_number,
    summarize_geometry,
)
from tests.conftest import nacl, silicon


def test_rock_salt_ratio_is_the_na_cl_bond():
    r = covalent_ratio(nacl())
    expected = 5.64 / 2 / (covalent_radii[11] + covalent_radii[17])
    assert r == pytest.approx(expected, rel=1e-6)
    assert r > 0.7


def test_close_pair_and_periodic_image_count():
    lat = Lattice.cubic(6.0)
    # across the 0/1 boundary: 0.02 and 0.98 are 0.24 Å apart through the periodic image
    s = Structure(lat, ["Si", "Si"], [[0.02, 0, 0], [0.98, 0, 0]])
    assert covalent_ratio(s) == pytest.approx(0.24 / (2 * covalent_radii[14]), rel=1e-6)
    # a lone atom meets its own image one lattice vector away, even in a long cell
    lone = Structure(Lattice.tetragonal(2.0, 30.0), ["Cu"], [[0, 0, 0]])
    assert covalent_ratio(lone) == pytest.approx(2.0 / (2 * covalent_radii[29]), rel=1e-6)
    sparse = Structure(Lattice.cubic(25.0), ["H"], [[0, 0, 0]])
    assert covalent_ratio(sparse) == pytest.approx(25.0 / (2 * covalent_radii[1]), rel=1e-6)


def test_summary_counts_failed_samples_in_every_share():
    squeezed = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.2, 0, 0]])
    summary = geometry_summary([nacl(), silicon(), squeezed, None])
    assert summary.n == 4 and summary.decoded == 3
    assert summary.plausible_share == pytest.approx(2 / 4)
    assert summary.symmetric_share == pytest.approx(3 / 4)  # the failed sample counts as P1
    assert space_group_number(nacl()) == 225 and space_group_number(squeezed) > 2
    empty = summarize_geometry([None], [None])
    assert empty.plausible_share == 0 and math.isnan(empty.median_ratio)
    with pytest.raises(ValueError, match="ratios"):
        summarize_geometry([1.0], [])
    # P-1 is symmetry above P1 but not "symmetric" (above P-1); None counts as neither
    groups = summarize_geometry([1.0, 1.0, 1.0, None], [1, 2, 225, None])
    assert (groups.above_p1_share, groups.symmetric_share) == (2 / 4, 1 / 4)


def test_describe_structure_reports_the_verdict():
    row = describe_structure(nacl())
    assert row["formula"] == "NaCl" and row["space_group"] == "Fm-3m" and row["plausible"] == 1
    assert float(row["covalent_ratio"]) > 1.0
    squeezed = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.2, 0, 0]])
    assert describe_structure(squeezed)["plausible"] == 0
