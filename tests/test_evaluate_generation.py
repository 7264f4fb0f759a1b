"""De novo metrics on hand-made cases: SMACT validity, coverage, Wasserstein, uniqueness,
novelty against a tiny reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from pccd.evaluate.generation_metrics import (
    CompositionScaler,
    coverage,
    density_wasserstein,
    element_count_wasserstein,
    is_compositionally_valid,
    request_quality,
    unique_mask,
)
from pccd.evaluate.novelty import ReferenceIndex
from tests.conftest import nacl, silicon
from tests.test_evaluate_distances import zinc_blende
from tests.test_evaluate_matching import shifted_permuted


def rock_salt_zns() -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.41), ["Zn", "S"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    ).get_primitive_structure()


def test_smact_validity_follows_the_cdvae_rules():
    assert is_compositionally_valid("NaCl") is True
    assert is_compositionally_valid("NaCl2") is False  # Na+ Cl- cannot balance 1:2
    assert is_compositionally_valid(nacl()) is True  # a Structure works too (Na4Cl4)
    assert is_compositionally_valid("Fe") is True  # one element
    assert is_compositionally_valid("Fe3Al") is True  # only metals: an alloy
    assert is_compositionally_valid("Mg2MnO4") is True
    assert is_compositionally_valid(None) is False  # not decoded


def test_coverage_on_hand_made_fingerprints():
    ref_s = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    ref_c = np.zeros((3, 2))
    gen_s = np.array([[0.1, 0.0], [5.0, 5.3], [9.0, 9.0]])
    gen_c = np.zeros((3, 2))
    identity = CompositionScaler(np.array([[-1.0, -1.0], [1.0, 1.0]]))  # mean 0, std 1
    assert identity.transform(np.array([[2.0, 3.0]]))[0] == pytest.approx([2.0, 3.0])

    cov = coverage(gen_s, gen_c, ref_s, ref_c, scaler=identity)
    # generated 0 is 0.1 from ref 0, generated 1 is 0.3 from ref 2, generated 2 is far
    assert cov.precision == pytest.approx(2 / 3)
    # ref 0 and ref 2 have a generated crystal within 0.4; ref 1 (0.9 away) does not
    assert cov.recall == pytest.approx(2 / 3)
    # crystals without fingerprints still count in the precision's denominator
    assert coverage(gen_s, gen_c, ref_s, ref_c, scaler=identity, n_generated=4).precision == 0.5

    # a composition 20 units away breaks generated 1's precision; ref 2 stays covered in
    # recall because CDVAE takes the nearest structure and nearest composition separately
    # (generated 1 for the structure, generated 0 for the composition)
    far_c = gen_c.copy()
    far_c[1] = [20.0, 0.0]
    cov = coverage(gen_s, far_c, ref_s, ref_c, scaler=identity)
    assert cov.precision == pytest.approx(1 / 3) and cov.recall == pytest.approx(2 / 3)
    # looser cut-offs cover everything
    cov = coverage(gen_s, far_c, ref_s, ref_c, scaler=identity, struct_cutoff=20, comp_cutoff=30)
    assert (cov.precision, cov.recall) == (1.0, 1.0)
    empty = coverage(np.zeros((0, 2)), np.zeros((0, 2)), ref_s, ref_c, n_generated=5)
    assert (empty.precision, empty.recall, empty.n_generated) == (0.0, 0.0, 5)


def test_composition_scaler_standardises_and_cleans():
    ref = np.array([[1.0, 5.0, np.nan], [3.0, 5.0, 2.0]])
    scaler = CompositionScaler(ref)
    out = scaler.transform(np.array([[2.0, 7.0, np.nan]]))
    assert out[0, 0] == pytest.approx(0.0)  # the mean
    assert out[0, 1] == pytest.approx(2.0)  # zero spread: only centred
    assert out[0, 2] == 0.0  # NaN → 0, as in CDVAE


@pytest.mark.slow
def test_wasserstein_distances():
    a = [nacl(), silicon()]
    assert density_wasserstein(a, [s.copy() for s in a]) == pytest.approx(0.0)
    assert element_count_wasserstein([nacl()], [silicon()]) == pytest.approx(1.0)
    assert density_wasserstein([nacl()], [silicon()]) == pytest.approx(
        abs(nacl().density - silicon().density)
    )


@pytest.mark.slow
def test_uniqueness_groups_equivalent_crystals():
    s = nacl()
    crystals = [s, shifted_permuted(s, [0.2, 0.1, 0.4]), silicon(), zinc_blende(), rock_salt_zns()]
    # the shifted copy repeats NaCl; the two ZnS polymorphs are different crystals
    assert unique_mask(crystals).tolist() == [True, False, True, True, True]


@pytest.mark.slow
def test_novelty_against_a_tiny_reference():
    index = ReferenceIndex.from_structures([nacl(), zinc_blende()], ids=["mp-nacl", "mp-zb"])
    assert len(index) == 2 and index.formulas == 2
    assert index.find(shifted_permuted(nacl(), [0.1, 0.2, 0.3])) == "mp-nacl"
    assert index.is_novel(shifted_permuted(nacl(), [0.5, 0.5, 0.5])) is False
    assert index.is_novel(rock_salt_zns()) is True  # known formula, unknown polymorph
    assert index.is_novel(silicon()) is True  # unknown formula


def test_reference_index_from_an_mp20_csv(tmp_path):
    sodium_nitride = Structure(Lattice.cubic(4.8), ["Na", "N"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    frame = pd.DataFrame(
        {
            "material_id": ["mp-1", "mp-2", "mp-3"],
            "pretty_formula": ["NaCl", "NaN", "Si"],  # "NaN" must stay a formula
            "cif": [nacl().to(fmt="cif"), sodium_nitride.to(fmt="cif"), "not a cif"],
            "band_gap": [5.0, 0.0, 1.1],
        }
    )
    path = tmp_path / "ref.csv.gz"
    frame.to_csv(path)
    index = ReferenceIndex.from_csv(path)
    assert len(index) == 3 and index.formulas == 3
    assert index.find(sodium_nitride) == "mp-2"
    assert index.find(nacl()) == "mp-1"
    assert index.is_novel(silicon())  # its reference CIF is broken: nothing to match
    with pytest.raises(FileNotFoundError):
        ReferenceIndex.from_csv(tmp_path / "missing.csv")


@pytest.mark.slow
def test_request_quality_counts_failed_decodes_against_the_shares():
    squeezed = nacl().copy()
    squeezed.scale_lattice(len(squeezed) * 2.0)  # 2 Å³/atom: right elements, not valid
    structures = [nacl(), silicon(), squeezed, None]
    requested = [["Na", "Cl"], ["Si", "O"], ["Na", "Cl"], ["Si"]]
    q = request_quality(structures, requested, [8, 2, 8])
    assert q["exact_elements"] == pytest.approx(2 / 4)
    assert q["valid"] == pytest.approx(2 / 4)
    assert q["atom_count_wasserstein"] == pytest.approx(0.0)  # 8, 2 and 8 atoms
    assert request_quality([nacl()], [["Na", "Cl"]], [6])["atom_count_wasserstein"] == 2.0
