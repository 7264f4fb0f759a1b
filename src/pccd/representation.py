"""The PCCD point-cloud representation: a crystal ⇄ a 3×128×3 array in [-1, 1].

Layout (Li et al., arXiv 2401.13192, Fig. 1), one "image" of 128 rows × 3 columns per channel:

* channel 0 — fractional coordinates x, y, z mapped from [0, 1) to [-1, 1); atom *i* fills a
  contiguous block of rows. Block sizes differ by at most one row (``round(k·128/N)``
  boundaries), unlike the authors' code that gave the whole remainder to the last atom.
* channel 1 — per row a one-hot over the ≤3 element slots, written as ±1. Slots are in
  canonical order (ascending atomic number, see :func:`slot_elements`), the order the model's
  element conditioning uses; unused slots are −1 in every row.
* channel 2 — lattice: rows ``[0, 64)`` hold the lengths (a, b, c), rows ``[64, 128)`` the
  angles (α, β, γ), each copied over its rows. Angles are ``angle/180°`` (the paper's /π).
  Lengths follow a named scheme: ``"paper"`` is ``length/15 Å`` (cells longer than 15 Å
  cannot be represented — kept for comparison), ``"log"`` (default) maps ``ln(length)`` from
  [ln 1 Å, ln 128 Å], which covers every cell of Materials Project's ≤16-site crystals with a
  constant relative resolution.

Decoding clusters the 128 points into atoms with DBSCAN on periodic (minimum-image) Cartesian
distances in Å computed from the decoded lattice, so an atom that straddles the 0/1 boundary is
one cluster. DBSCAN noise points are not atoms (the authors' code counted them as one). Each
cluster's element is the vote of its rows' channel-1 argmax; its position is the circular mean
of its rows (so 0.99 and 0.01 average to 0.0, not 0.5). The lattice is the median of its rows.
Failures come back as a :class:`DecodeFailure` with a reason, never as an exception or a
broken structure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum

import numpy as np
from pymatgen.core import Lattice, Structure
from pymatgen.core.periodic_table import Element
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

from pccd.conditioning import MAX_SLOTS
from pccd.generator import DecodeFailure, DecodeReason, as_elements

N_ROWS = 128
N_CHANNELS = 3
WIDTH = 3
ARRAY_SHAPE = (N_CHANNELS, N_ROWS, WIDTH)


class LatticeScheme(StrEnum):
    """How lattice lengths are scaled into [-1, 1]."""

    PAPER = "paper"  # length / 15 Å, clipped: the published scheme
    LOG = "log"  # log-length between LOG_MIN and LOG_MAX Å: represents long cells too


class ClusterBy(StrEnum):
    """Which points DBSCAN clusters together."""

    ELEMENT = "element"  # each element's rows separately (as the authors' decoder did)
    ALL = "all"  # all 128 rows at once; the element of a cluster is its majority vote


class RowLayout(StrEnum):
    """Which rows an atom fills."""

    SPREAD = "spread"  # the paper: N atoms share all 128 rows, ~128/N rows each
    FIXED = "fixed"  # atom i always fills rows [8i, 8i + 8); rows of absent atoms are empty


FIXED_ROWS_PER_ATOM = 8
"""Rows per atom in the ``fixed`` layout (128 rows = 16 atom slots, the data's largest cell)."""


class FormulaDecoding(StrEnum):
    """How an array is decoded when the exact formula (atom count per element) is known."""

    BLOCKS = "blocks"  # the known count fixes the row blocks: atom i = the rows of block i
    CLUSTER = "cluster"  # ignore the formula and cluster with DBSCAN, as without one


@dataclass(frozen=True)
class RepresentationConfig:
    """Options of encoding and decoding. Stored with a model so samples decode the same way.

    Attributes:
        lattice_scheme: ``"log"`` (default) or ``"paper"``.
        paper_max_length: Å that maps to +1 in the paper scheme.
        log_min_length, log_max_length: Å that map to -1 / +1 in the log scheme.
        eps: DBSCAN neighbourhood radius in Å (periodic Cartesian distance).
        min_samples: DBSCAN core-point size; smaller groups of points are noise, not atoms.
        cluster_by: ``"element"`` (default) clusters the rows of each element separately, so
            a minority element's atom cannot be absorbed into a neighbour's cluster;
            ``"all"`` clusters all rows together and lets each cluster vote its element.
        merge_overlaps: clusters whose centres are closer than ``min_distance`` are merged
            into one atom (majority element) instead of failing as ``atoms_too_close``.
        formula_decoding: with a known formula (CSP mode), ``"blocks"`` (default) takes the
            atoms from the row blocks that the count fixes — the encoder's layout — so the
            decoded cell has exactly the requested composition; ``"cluster"`` runs DBSCAN as
            without a formula (the paper's decoder), so atoms can be merged or lost.
        max_atoms: more clusters than this is a failure (the training data has ≤16 sites).
        min_distance: decoded atoms closer than this (Å) is a failure.
        min_volume: decoded cells smaller than this (Å³) are degenerate.
        row_layout: ``"spread"`` (the paper) spreads N atoms over all rows, so where an atom's
            rows begin depends on N, which the network must infer from noisy rows; ``"fixed"``
            gives atom i rows [8i, 8i + 8) whatever N, and marks the rows of absent atoms
            empty (channel 1 all −1, channel 0 zero): a row always knows its atom slot, and at
            the U-Net level with 16 rows each position is exactly one atom.
    """

    lattice_scheme: LatticeScheme = LatticeScheme.LOG
    paper_max_length: float = 15.0
    log_min_length: float = 1.0
    log_max_length: float = 128.0
    eps: float = 0.5
    min_samples: int = 3
    max_atoms: int = 16
    min_distance: float = 0.5
    min_volume: float = 1.0
    cluster_by: ClusterBy = ClusterBy.ELEMENT
    merge_overlaps: bool = True
    formula_decoding: FormulaDecoding = FormulaDecoding.BLOCKS
    row_layout: RowLayout = RowLayout.SPREAD

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["lattice_scheme"] = self.lattice_scheme.value
        d["cluster_by"] = self.cluster_by.value
        d["formula_decoding"] = self.formula_decoding.value
        d["row_layout"] = self.row_layout.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> RepresentationConfig:
        d = dict(d)
        d["lattice_scheme"] = LatticeScheme(d.get("lattice_scheme", LatticeScheme.LOG))
        d["cluster_by"] = ClusterBy(d.get("cluster_by", ClusterBy.ELEMENT))
        d["formula_decoding"] = FormulaDecoding(d.get("formula_decoding", FormulaDecoding.BLOCKS))
        d["row_layout"] = RowLayout(d.get("row_layout", RowLayout.SPREAD))
        return cls(**d)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Element slots
# --------------------------------------------------------------------------------------------


def slot_elements(structure: Structure) -> list[Element]:
    """The structure's elements in canonical slot order (ascending atomic number)."""
    return sorted({Element(sp.symbol) for sp in structure.species}, key=lambda e: e.Z)


# --------------------------------------------------------------------------------------------
# Scaling of values into [-1, 1]
# --------------------------------------------------------------------------------------------


def scale_lengths(lengths: np.ndarray, config: RepresentationConfig) -> np.ndarray:
    """Lattice lengths (Å) → [-1, 1] under the configured scheme (clipped at the ends)."""
    lengths = np.asarray(lengths, dtype=np.float64)
    if config.lattice_scheme is LatticeScheme.PAPER:
        v = 2.0 * lengths / config.paper_max_length - 1.0
    else:
        lo, hi = math.log(config.log_min_length), math.log(config.log_max_length)
        v = 2.0 * (np.log(np.maximum(lengths, 1e-6)) - lo) / (hi - lo) - 1.0
    return np.clip(v, -1.0, 1.0)


def unscale_lengths(v: np.ndarray, config: RepresentationConfig) -> np.ndarray:
    """Inverse of :func:`scale_lengths` (values are clipped to [-1, 1] first)."""
    v = np.clip(np.asarray(v, dtype=np.float64), -1.0, 1.0)
    if config.lattice_scheme is LatticeScheme.PAPER:
        return (v + 1.0) / 2.0 * config.paper_max_length
    lo, hi = math.log(config.log_min_length), math.log(config.log_max_length)
    return np.exp((v + 1.0) / 2.0 * (hi - lo) + lo)


def scale_angles(angles: np.ndarray) -> np.ndarray:
    """Angles in degrees → [-1, 1] (the paper's angle/π)."""
    return 2.0 * np.asarray(angles, dtype=np.float64) / 180.0 - 1.0


def unscale_angles(v: np.ndarray) -> np.ndarray:
    """Inverse of :func:`scale_angles`."""
    return (np.clip(np.asarray(v, dtype=np.float64), -1.0, 1.0) + 1.0) / 2.0 * 180.0


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def row_blocks(
    n_atoms: int, n_rows: int = N_ROWS, layout: RowLayout = RowLayout.SPREAD
) -> np.ndarray:
    """(n_rows,) atom index of every row: contiguous blocks whose sizes differ by ≤ 1
    (``spread``), or ``FIXED_ROWS_PER_ATOM`` rows per atom and -1 for empty rows (``fixed``)."""
    if layout is RowLayout.FIXED:
        slots = n_rows // FIXED_ROWS_PER_ATOM
        if not 1 <= n_atoms <= slots:
            raise ValueError(f"the fixed row layout holds 1 to {slots} atoms, got {n_atoms}")
        labels = np.full(n_rows, -1, dtype=np.int64)
        labels[: n_atoms * FIXED_ROWS_PER_ATOM] = np.repeat(np.arange(n_atoms), FIXED_ROWS_PER_ATOM)
        return labels
    if not 1 <= n_atoms <= n_rows:
        raise ValueError(f"cannot spread {n_atoms} atoms over {n_rows} rows")
    bounds = np.floor(np.arange(n_atoms + 1) * n_rows / n_atoms + 0.5).astype(np.int64)
    return np.repeat(np.arange(n_atoms), np.diff(bounds))


def encode_arrays(
    frac_coords: np.ndarray,
    slots: np.ndarray,
    lengths: np.ndarray,
    angles: np.ndarray,
    config: RepresentationConfig = RepresentationConfig(),
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Encode one crystal given as plain arrays, atoms in the given order.

    This is the fast path used by training (which permutes and shifts atoms for augmentation
    before calling it) and by :func:`encode`.

    Args:
        frac_coords: (N, 3) fractional coordinates (any real values; wrapped into [0, 1)).
        slots: (N,) element slot index (0..2) of every atom.
        lengths: (3,) a, b, c in Å.
        angles: (3,) α, β, γ in degrees.
        config: lattice scheme and row layout.
        out: optional (3, 128, 3) float array to write into.

    Returns:
        The (3, 128, 3) float32 array.
    """
    frac = np.asarray(frac_coords, dtype=np.float64) % 1.0
    rows = row_blocks(len(frac), layout=config.row_layout)
    filled = np.flatnonzero(rows >= 0)
    x = np.empty(ARRAY_SHAPE, dtype=np.float32) if out is None else out
    x[0] = 0.0  # rows of absent atoms (fixed layout only)
    x[0, filled] = 2.0 * frac[rows[filled]] - 1.0
    x[1] = -1.0
    x[1, filled, np.asarray(slots)[rows[filled]]] = 1.0
    half = N_ROWS // 2
    x[2, :half] = scale_lengths(lengths, config)
    x[2, half:] = scale_angles(angles)
    return x


def encode(
    structure: Structure, config: RepresentationConfig = RepresentationConfig()
) -> tuple[np.ndarray, list[Element]]:
    """Encode a structure. Returns the (3, 128, 3) array and the elements in slot order.

    Atoms are ordered by slot (stable), so each element occupies one contiguous run of rows.

    Raises:
        ValueError: more than 3 elements, more than 128 sites, or a disordered structure.
    """
    if not structure.is_ordered:
        raise ValueError("cannot encode a disordered (partially occupied) structure")
    elements = slot_elements(structure)
    if len(elements) > MAX_SLOTS:
        raise ValueError(f"{len(elements)} elements > {MAX_SLOTS} slots")
    z_to_slot = {el.Z: k for k, el in enumerate(elements)}
    slots = np.array([z_to_slot[z] for z in structure.atomic_numbers])
    order = np.argsort(slots, kind="stable")
    lat = structure.lattice
    x = encode_arrays(
        structure.frac_coords[order], slots[order], np.array(lat.abc), np.array(lat.angles), config
    )
    return x, elements


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def decode_lattice(
    x: np.ndarray, config: RepresentationConfig = RepresentationConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """Lattice lengths (Å) and angles (°) from channel 2, as the median over rows."""
    half = N_ROWS // 2
    lengths = unscale_lengths(np.median(x[2, :half], axis=0), config)
    angles = unscale_angles(np.median(x[2, half:], axis=0))
    return lengths, angles


def _lattice_problem(
    lengths: np.ndarray, angles: np.ndarray, volume: float, cfg: RepresentationConfig
) -> str | None:
    if np.any(lengths <= 0.1):
        return f"lattice length {lengths.min():.3g} Å"
    a = np.radians(angles)
    if np.any(angles <= 0) or np.any(angles >= 180):
        return f"angles {np.round(angles, 1).tolist()}"
    # The three angles must form a valid spherical triangle, else the metric is not positive.
    if (
        a.sum() >= 2 * np.pi
        or a[0] + a[1] <= a[2]
        or a[1] + a[2] <= a[0]
        or a[0] + a[2] <= a[1]
        or not math.isfinite(volume)
        or volume < cfg.min_volume
    ):
        return f"cell volume {volume:.3g} Å³ from angles {np.round(angles, 1).tolist()}"
    return None


def circular_mean(frac: np.ndarray) -> np.ndarray:
    """Mean of fractional coordinates on the unit circle, per axis; result in [0, 1)."""
    theta = 2.0 * np.pi * frac
    mean = np.arctan2(np.sin(theta).mean(axis=0), np.cos(theta).mean(axis=0))
    return (mean / (2.0 * np.pi)) % 1.0


def _merge_overlapping_clusters(
    labels: np.ndarray, frac: np.ndarray, lattice: Lattice, min_distance: float
) -> np.ndarray:
    """Relabel so that clusters whose centres are closer than ``min_distance`` become one.

    Two atoms cannot sit that close, so such clusters are one atom whose rows disagree on the
    element (typically at the boundary between two elements' row blocks); the merged cluster
    then takes the majority element. Noise (-1) stays noise.
    """
    n = int(labels.max()) + 1
    centres = np.array([circular_mean(frac[labels == k]) for k in range(n)])
    close = lattice.get_all_distances(centres, centres) < min_distance
    _, groups = connected_components(close, directed=False)
    return np.where(labels >= 0, groups[np.maximum(labels, 0)], -1)


def decode(
    x: np.ndarray,
    elements: Sequence[str | int | Element],
    config: RepresentationConfig = RepresentationConfig(),
    counts: Sequence[int] | None = None,
) -> Structure | DecodeFailure:
    """Decode one (3, 128, 3) array into a ``Structure``, or say why it cannot be decoded.

    Args:
        x: the array (numpy or anything ``np.asarray`` accepts).
        elements: the crystal's elements; they are put in slot order (ascending Z), matching
            :func:`encode` and the model's conditioning.
        config: lattice scheme and clustering tolerances.
        counts: atoms per element in slot order when the formula is known (CSP mode); used as
            ``config.formula_decoding`` says.
    """
    els = as_elements(elements)
    x = np.asarray(x, dtype=np.float64)
    if x.shape != ARRAY_SHAPE:
        raise ValueError(f"expected an array of shape {ARRAY_SHAPE}, got {x.shape}")
    if not np.all(np.isfinite(x)):
        return DecodeFailure(DecodeReason.NON_FINITE, f"{int(np.sum(~np.isfinite(x)))} NaN/inf")
    lengths, angles = decode_lattice(x, config)
    with np.errstate(all="ignore"):  # invalid angle sets give NaN volumes, reported below
        lattice = Lattice.from_parameters(*lengths, *angles)
        volume = lattice.volume
    problem = _lattice_problem(lengths, angles, volume, config)
    if problem:
        return DecodeFailure(DecodeReason.DEGENERATE_LATTICE, problem)

    frac = ((np.clip(x[0], -1.0, 1.0) + 1.0) / 2.0) % 1.0
    scores = x[1, :, : len(els)]
    votes = np.argmax(scores, axis=1)
    if counts is not None and (
        config.formula_decoding is FormulaDecoding.BLOCKS or config.row_layout is RowLayout.FIXED
    ):
        if sum(counts) > config.max_atoms:  # the fixed layout has no rows for them
            return DecodeFailure(
                DecodeReason.TOO_MANY_ATOMS, f"formula of {sum(counts)} atoms > {config.max_atoms}"
            )
        species, coords = _atoms_from_blocks(frac, scores, els, counts, config.row_layout)
        return _checked_structure(lattice, species, coords, config)
    labels = atom_labels(frac, scores, lattice, config)
    species, coords = [], []
    for k in range(int(labels.max()) + 1):
        member = labels == k
        species.append(els[int(np.bincount(votes[member], minlength=len(els)).argmax())])
        coords.append(circular_mean(frac[member]))
    if not species:
        detail = (
            "no row block holds an atom"
            if config.row_layout is RowLayout.FIXED
            else "every point is DBSCAN noise"
        )
        return DecodeFailure(DecodeReason.NO_CLUSTERS, detail)
    if len(species) > config.max_atoms:
        return DecodeFailure(
            DecodeReason.TOO_MANY_ATOMS, f"{len(species)} clusters > {config.max_atoms}"
        )
    return _checked_structure(lattice, species, coords, config)


def atom_labels(
    frac: np.ndarray,
    scores: np.ndarray,
    lattice: Lattice,
    config: RepresentationConfig,
    counts: Sequence[int] | None = None,
) -> np.ndarray:
    """(128,) atom label of every row, -1 = not an atom: how the decoder groups rows.

    ``scores`` are channel 1 of the used slots (128, k). A known formula fixes the blocks
    (:func:`row_blocks`); otherwise the ``spread`` layout clusters rows (:func:`cluster_rows`)
    and the ``fixed`` layout takes the blocks whose mean element score is positive in some
    slot (an empty block is −1 in every slot), merging atoms that overlap when
    ``merge_overlaps``. Used by :func:`decode` and by sampling-time repulsion.
    """
    if counts is not None:
        return row_blocks(int(sum(counts)), layout=config.row_layout)
    if config.row_layout is RowLayout.SPREAD:
        return cluster_rows(frac, np.argmax(scores, axis=1), lattice, config)
    block = np.arange(N_ROWS) // FIXED_ROWS_PER_ATOM
    means = scores.reshape(-1, FIXED_ROWS_PER_ATOM, scores.shape[1]).mean(axis=1)  # per block
    occupied = np.flatnonzero(means.max(axis=1) > 0.0)
    new_label = np.full(len(means), -1, dtype=np.int64)
    new_label[occupied] = np.arange(len(occupied))
    labels = new_label[block]
    if config.merge_overlaps and len(occupied) > 1:
        labels = _merge_overlapping_clusters(labels, frac, lattice, config.min_distance)
    return labels


def cluster_rows(
    frac: np.ndarray, votes: np.ndarray, lattice: Lattice, config: RepresentationConfig
) -> np.ndarray:
    """(128,) atom label of every row (-1 = DBSCAN noise): the decoder's clustering.

    Periodic Cartesian distances from ``lattice``; with ``cluster_by="element"`` rows voting
    for different elements are never neighbours; overlapping clusters are merged when
    ``merge_overlaps``. The ``spread`` layout's grouping (see :func:`atom_labels`).
    """
    # imported here: scikit-learn takes 1.3 s to import, and packing, exporting or configuring
    # a point-cloud run reads this module without decoding anything
    from sklearn.cluster import DBSCAN

    dist = lattice.get_all_distances(frac, frac)
    if config.cluster_by is ClusterBy.ELEMENT:
        # rows voting for different elements are never neighbours: one DBSCAN call clusters
        # every element's rows separately
        dist[votes[:, None] != votes[None, :]] = 1e9
    labels = (
        DBSCAN(eps=config.eps, min_samples=config.min_samples, metric="precomputed")
        .fit(dist)
        .labels_
    )
    if config.merge_overlaps and labels.max() > 0:
        labels = _merge_overlapping_clusters(labels, frac, lattice, config.min_distance)
    return labels


def _atoms_from_blocks(
    frac: np.ndarray,
    slot_scores: np.ndarray,
    els: list[Element],
    counts: Sequence[int],
    layout: RowLayout = RowLayout.SPREAD,
) -> tuple[list[Element], list[np.ndarray]]:
    """Atoms of a crystal of known formula: one per row block of :func:`row_blocks`.

    The encoder gives atom ``i`` the rows of block ``i``, so a known atom count fixes the
    blocks and no clustering is needed: an atom sits at the circular mean of its rows. Species
    are assigned to blocks one-to-one so the composition is exactly ``counts``, maximising the
    rows' summed element scores (the model's channel 1), which does not assume any atom order.
    """
    if len(counts) != len(els) or min(counts) < 1:
        raise ValueError(f"counts {list(counts)} do not fit elements {[str(e) for e in els]}")
    n = int(sum(counts))
    blocks = row_blocks(n, layout=layout)
    score = np.stack([slot_scores[blocks == i].sum(axis=0) for i in range(n)])  # (atoms, slots)
    slot_of_atom = np.repeat(np.arange(len(els)), counts)
    rows, cols = linear_sum_assignment(-score[:, slot_of_atom])
    species = [els[int(slot_of_atom[c])] for c in cols[np.argsort(rows)]]
    coords = [circular_mean(frac[blocks == i]) for i in range(n)]
    return species, coords


def _checked_structure(
    lattice: Lattice, species: list[Element], coords: list[np.ndarray], config: RepresentationConfig
) -> Structure | DecodeFailure:
    structure = Structure(lattice, species, np.array(coords))
    if len(structure) > 1:
        dm = structure.distance_matrix
        dmin = float(dm[np.triu_indices(len(structure), 1)].min())
        if dmin < config.min_distance:
            return DecodeFailure(
                DecodeReason.ATOMS_TOO_CLOSE, f"atoms {dmin:.3f} Å apart (< {config.min_distance})"
            )
    return structure
