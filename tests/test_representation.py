"""Encode/decode of the 3×128×3 point cloud on hand-made crystals with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from pccd import representation as rep
from tests.conftest import KNOWN, boundary, long_cell, nacl, silicon

MATCHER = StructureMatcher()


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_round_trip_matches(name):
    s = KNOWN[name]()
    x, els = rep.encode(s)
    assert x.shape == rep.ARRAY_SHAPE and x.dtype == np.float32
    assert x.min() >= -1 and x.max() <= 1
    out = rep.decode(x, els)
    assert isinstance(out, Structure), out
    assert len(out) == len(s)
    assert out.composition == s.composition
    assert MATCHER.fit(s, out)


def test_channel_layout_nacl():
    s = nacl()
    x, els = rep.encode(s)
    assert [e.Z for e in els] == [11, 17]  # slot order: ascending Z
    # channel 1: one-hot in ±1, the unused third slot is -1 everywhere
    assert set(np.unique(x[1])) == {-1.0, 1.0}
    assert np.all(x[1, :, 2] == -1)
    assert np.all((x[1] == 1).sum(axis=1) == 1)
    # 8 atoms over 128 rows: 16 rows each, Na (slot 0) first
    assert np.all(x[1, :64, 0] == 1) and np.all(x[1, 64:, 1] == 1)
    # channel 2: lengths in the first half, angles (90° → 0) in the second
    assert np.allclose(x[2, 64:], 0.0)
    assert np.allclose(x[2, :64], x[2, 0])


def test_row_blocks_spread_remainder_evenly():
    for n in range(1, 17):
        rows = rep.row_blocks(n)
        sizes = np.bincount(rows)
        assert len(rows) == 128 and len(sizes) == n
        assert sizes.max() - sizes.min() <= 1
        assert np.all(np.diff(rows) >= 0)  # contiguous blocks
    # 3 atoms: 43/42/43, not 42/42/44 as when the last atom takes the remainder
    assert sorted(np.bincount(rep.row_blocks(3)).tolist()) == [42, 43, 43]


def test_paper_scheme_cannot_hold_long_cells_but_log_can():
    s = long_cell()
    paper = rep.RepresentationConfig(lattice_scheme=rep.LatticeScheme.PAPER)
    x, els = rep.encode(s, paper)
    out = rep.decode(x, els, paper)
    assert isinstance(out, rep.DecodeFailure) or not MATCHER.fit(s, out)
    if not isinstance(out, rep.DecodeFailure):
        assert out.lattice.c == pytest.approx(15.0)
    x, els = rep.encode(s)
    out = rep.decode(x, els)
    assert out.lattice.c == pytest.approx(24.0, rel=1e-5)


def test_length_scaling_inverts():
    for scheme in rep.LatticeScheme:
        cfg = rep.RepresentationConfig(lattice_scheme=scheme)
        lengths = np.array([2.0, 7.5, 14.9])
        assert np.allclose(rep.unscale_lengths(rep.scale_lengths(lengths, cfg), cfg), lengths)
    angles = np.array([60.0, 90.0, 120.0])
    assert np.allclose(rep.unscale_angles(rep.scale_angles(angles)), angles)


def test_boundary_atoms_use_circular_mean():
    s = boundary()
    x, els = rep.encode(s)
    # add small noise so the Mg cloud straddles 0/1 in every axis
    rng = np.random.default_rng(1)
    x = x + rng.normal(0, 0.004, x.shape)
    out = rep.decode(x, els)
    assert isinstance(out, Structure) and len(out) == 3
    mg = next(site for site in out if site.specie.symbol == "Mg")
    d = mg.frac_coords - np.array([0.999, 0.0005, 0.9995])
    d -= np.round(d)
    assert np.all(np.abs(d) < 0.01)  # a naive mean would put it near 0.5


def test_circular_mean_wraps():
    m = rep.circular_mean(np.array([[0.98, 0.5, 0.1], [0.02, 0.5, 0.3]]))
    assert np.allclose(m, [0.0, 0.5, 0.2], atol=1e-9) or np.allclose(m, [1.0, 0.5, 0.2])


def test_noisy_arrays_still_decode():
    rng = np.random.default_rng(0)
    for make in KNOWN.values():
        s = make()
        x, els = rep.encode(s)
        out = rep.decode(x + rng.normal(0, 0.02, x.shape), els)
        assert isinstance(out, Structure) and MATCHER.fit(s, out)


def test_noise_points_are_not_atoms():
    s = silicon()
    x, els = rep.encode(s)
    # two stray rows far from every atom: DBSCAN noise, which the authors' code counted as an atom
    x[0, 0] = [0.0, -0.5, 0.6]
    x[0, 127] = [0.6, 0.1, -0.7]
    out = rep.decode(x, els)
    assert isinstance(out, Structure) and len(out) == 2


def test_failure_non_finite():
    x, els = rep.encode(nacl())
    x[2, 3, 1] = np.nan
    out = rep.decode(x, els)
    assert isinstance(out, rep.DecodeFailure) and out.reason is rep.DecodeReason.NON_FINITE


def test_failure_degenerate_lattice():
    x, els = rep.encode(nacl())
    x[2, 64:] = 0.95  # all angles 171°: no valid cell
    out = rep.decode(x, els)
    assert isinstance(out, rep.DecodeFailure)
    assert out.reason is rep.DecodeReason.DEGENERATE_LATTICE


def test_failure_no_clusters():
    x, els = rep.encode(nacl())
    x[0] = np.random.default_rng(0).uniform(-1, 1, (128, 3))  # scattered: every point is noise
    out = rep.decode(x, els, rep.RepresentationConfig(eps=0.2, min_samples=6))
    assert isinstance(out, rep.DecodeFailure) and out.reason is rep.DecodeReason.NO_CLUSTERS


def test_failure_too_many_atoms():
    # 32 well-separated atoms on a grid in a 20 Å cell: more than the 16 a crystal may have
    grid = np.stack(np.meshgrid(*[np.linspace(0, 0.75, 4)] * 2, [0.0, 0.5], indexing="ij"), -1)
    frac = grid.reshape(-1, 3)
    x = rep.encode_arrays(frac, np.zeros(32, dtype=int), np.array([20.0] * 3), np.array([90.0] * 3))
    assert len(np.unique(rep.row_blocks(32))) == 32
    out = rep.decode(x, ["C"])
    assert isinstance(out, rep.DecodeFailure) and out.reason is rep.DecodeReason.TOO_MANY_ATOMS


def test_failure_atoms_too_close():
    frac = np.array([[0, 0, 0], [0.12, 0, 0]])  # 0.6 Å apart in a 5 Å cell
    x = rep.encode_arrays(frac, np.array([0, 0]), np.array([5.0] * 3), np.array([90.0] * 3))
    cfg = rep.RepresentationConfig(eps=0.3, min_distance=1.0, merge_overlaps=False)
    out = rep.decode(x, ["Cu"], cfg)
    assert isinstance(out, rep.DecodeFailure) and out.reason is rep.DecodeReason.ATOMS_TOO_CLOSE


def test_overlapping_clusters_merge_into_one_atom_by_vote():
    # rows 0-63: a Mg atom at the origin whose first 12 rows vote O; rows 64-127: O at the
    # centre. Per-element clustering puts a small O cluster on top of the Mg cluster; merging
    # gives one Mg atom (majority vote) instead of an atoms_too_close failure.
    frac = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    x = rep.encode_arrays(frac, np.array([1, 0]), np.array([4.2] * 3), np.array([90.0] * 3))
    x[1, 64:] = [1, -1, -1]
    x[1, :64] = np.where(np.arange(64)[:, None] < 12, [1, -1, -1], [-1, 1, -1])
    x[0, :64] = -1.0
    x[0, 64:] = 0.0
    strict = rep.decode(x, ["O", "Mg"], rep.RepresentationConfig(merge_overlaps=False))
    assert isinstance(strict, rep.DecodeFailure)
    assert strict.reason is rep.DecodeReason.ATOMS_TOO_CLOSE
    merged = rep.decode(x, ["O", "Mg"])
    assert isinstance(merged, Structure) and merged.composition.reduced_formula == "MgO"


def test_element_vote_and_bad_requests():
    s = nacl()
    x, els = rep.encode(s)
    x[1, :3] = [-1, 1, -1]  # three Na rows voting Cl do not change the majority
    out = rep.decode(x, els, rep.RepresentationConfig(cluster_by=rep.ClusterBy.ALL))
    assert out.composition == s.composition
    x, els = rep.encode(s)
    x[1, :2] = [-1, 1, -1]  # per-element clustering: two stray Cl rows are noise, not an atom
    out = rep.decode(x, els, rep.RepresentationConfig(cluster_by=rep.ClusterBy.ELEMENT))
    assert out.composition == s.composition
    with pytest.raises(ValueError, match="unknown element"):
        rep.decode(x, ["Na", "Qq"])
    with pytest.raises(ValueError, match="1 to 3"):
        rep.decode(x, ["Na", "Cl", "K", "Br"])
    with pytest.raises(ValueError, match="shape"):
        rep.decode(x[:, :64], els)


def test_encode_rejects_disordered_and_four_elements():
    s = nacl()
    s.replace_species({"Na": {"Na": 0.5, "K": 0.5}})
    with pytest.raises(ValueError, match="disordered"):
        rep.encode(s)
    s4 = Structure(
        Lattice.cubic(6),
        ["Na", "Cl", "K", "Br"],
        [[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]],
    )
    with pytest.raises(ValueError, match="4 elements"):
        rep.encode(s4)


def test_config_round_trips_through_dict():
    cfg = rep.RepresentationConfig(lattice_scheme=rep.LatticeScheme.PAPER, eps=0.4)
    assert rep.RepresentationConfig.from_dict(cfg.to_dict()) == cfg


def test_element_clustering_keeps_a_close_minority_atom():
    # Cu and O 1.1 Å apart: with a wide eps, pooled clustering merges them into one atom and
    # loses O; clustering each element's rows separately keeps both.
    frac = np.array([[0.0, 0.0, 0.0], [1.1 / 6.0, 0.0, 0.0]])
    x = rep.encode_arrays(frac, np.array([0, 1]), np.array([6.0] * 3), np.array([90.0] * 3))
    pooled = rep.RepresentationConfig(eps=1.2, cluster_by=rep.ClusterBy.ALL)
    per_element = rep.RepresentationConfig(eps=1.2, cluster_by=rep.ClusterBy.ELEMENT)
    assert len(rep.decode(x, ["O", "Cu"], pooled)) == 1
    out = rep.decode(x, ["O", "Cu"], per_element)
    assert sorted(e.symbol for e in out.composition.elements) == ["Cu", "O"]


def _counts(s: Structure, els) -> list[int]:
    return [int(s.composition[e]) for e in els]


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_known_formula_decodes_from_row_blocks(name):
    s = KNOWN[name]()
    x, els = rep.encode(s)
    out = rep.decode(x, els, counts=_counts(s, els))
    assert isinstance(out, Structure), out
    assert out.composition == s.composition
    assert MATCHER.fit(s, out)


def test_known_formula_never_merges_two_atoms_silently():
    s = nacl()
    els = rep.slot_elements(s)
    # atoms 0 and 1 (both Na) put on top of each other: DBSCAN sees one Na atom there
    frac = s.frac_coords.copy()
    order = np.argsort([rep.slot_elements(s).index(site.specie) for site in s], kind="stable")
    frac, species = frac[order], [s[int(i)].specie for i in order]
    frac[1] = frac[0] + 0.01
    slots = np.array([els.index(e) for e in species])
    x = rep.encode_arrays(frac, slots, s.lattice.abc, s.lattice.angles)
    clustered = rep.decode(x, els)
    assert isinstance(clustered, rep.DecodeFailure) or len(clustered) == len(s) - 1
    blocks = rep.decode(x, els, counts=_counts(s, els))
    # the two atoms now sit 0.06 Å apart: the formula is kept and the closeness is reported
    assert isinstance(blocks, rep.DecodeFailure)
    assert blocks.reason is rep.DecodeReason.ATOMS_TOO_CLOSE
    paper = rep.RepresentationConfig(formula_decoding=rep.FormulaDecoding.CLUSTER)
    assert str(rep.decode(x, els, paper, counts=_counts(s, els))) == str(clustered)


def test_known_formula_assigns_species_by_the_rows_votes_not_by_order():
    s = nacl()
    els = rep.slot_elements(s)
    order = np.argsort([-els.index(site.specie) for site in s], kind="stable")  # Cl first
    frac = s.frac_coords[order]
    slots = np.array([els.index(s[int(i)].specie) for i in order])
    x = rep.encode_arrays(frac, slots, s.lattice.abc, s.lattice.angles)
    out = rep.decode(x, els, counts=_counts(s, els))
    assert isinstance(out, Structure) and MATCHER.fit(s, out)
    with pytest.raises(ValueError, match="do not fit"):
        rep.decode(x, els, counts=[4])


FIXED = rep.RepresentationConfig(row_layout=rep.RowLayout.FIXED)


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_fixed_layout_round_trip_with_and_without_formula(name):
    s = KNOWN[name]()
    if len(s) > 16:
        pytest.skip("the fixed layout holds ≤ 16 atoms")
    x, els = rep.encode(s, FIXED)
    for counts in (None, _counts(s, els)):
        out = rep.decode(x, els, FIXED, counts=counts)
        assert isinstance(out, Structure), out
        assert out.composition == s.composition and MATCHER.fit(s, out)


def test_fixed_layout_rows():
    s = nacl()  # 8 atoms: rows 0-63 hold them (8 each, Na first), rows 64-127 are empty
    x, _ = rep.encode(s, FIXED)
    assert np.all(x[1, :32, 0] == 1) and np.all(x[1, 32:64, 1] == 1)
    assert np.all(x[1, 64:] == -1) and np.all(x[0, 64:] == 0)
    assert rep.row_blocks(8, layout=rep.RowLayout.FIXED).tolist() == [
        *np.repeat(np.arange(8), 8).tolist(),
        *[-1] * 64,
    ]
    with pytest.raises(ValueError, match="1 to 16 atoms"):
        rep.row_blocks(17, layout=rep.RowLayout.FIXED)
    # the layout travels with a model's representation settings
    assert rep.RepresentationConfig.from_dict(FIXED.to_dict()) == FIXED
    assert rep.RepresentationConfig.from_dict({}).row_layout is rep.RowLayout.SPREAD


def test_fixed_layout_reads_atoms_from_block_scores_and_merges_overlaps():
    s = nacl()
    x, els = rep.encode(s, FIXED)
    x[1, 72:80, 0] = 0.6  # an empty block turned weakly Na: a ninth atom, at frac 0.25
    x[0, 72:80] = -0.5
    out = rep.decode(x, els, FIXED)
    assert isinstance(out, Structure) and len(out) == 9
    assert out.composition["Na"] == 5
    # an atom block that lands on another atom's place is one atom, not two
    x, els = rep.encode(s, FIXED)
    x[0, 8:16] = x[0, 0]
    merged = rep.decode(x, els, FIXED)
    assert isinstance(merged, Structure) and len(merged) == 7
    strict = rep.RepresentationConfig(row_layout=rep.RowLayout.FIXED, merge_overlaps=False)
    fail = rep.decode(x, els, strict)
    assert isinstance(fail, rep.DecodeFailure) and fail.reason is rep.DecodeReason.ATOMS_TOO_CLOSE
    # every block empty: a typed failure, not an exception
    x[1] = -1.0
    empty = rep.decode(x, els, FIXED)
    assert isinstance(empty, rep.DecodeFailure) and empty.reason is rep.DecodeReason.NO_CLUSTERS
