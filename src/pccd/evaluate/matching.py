"""Atom-to-atom comparison of two crystals: periodic differences and greedy one-to-one matching.

The PCCD paper (Li et al., Fig. 1 and Table 1) compares a reconstructed crystal with its
original by matching atoms greedily under periodic images and reading off per-atom coordinate
errors. Two choices the paper leaves open are made explicit here:

* **Origin alignment** (``align_origin=True`` by default). A model trained with random origin
  shifts (pccd's default augmentation) cannot know the original origin once the array has been
  noised far, so raw coordinate errors would measure the arbitrary shift, not the structure.
  The predicted crystal is translated by the shift that minimises the matched distances (tried
  from every same-element atom pair, then refined by the circular mean of the residuals).
* **Elements first**. Pairs of the same element are matched before any pair of different
  elements; mismatched pairs only occur when the per-element counts differ, and are counted.

Distances are minimum-image Cartesian distances in the *original* lattice (so a lattice error
does not leak into the coordinate error); coordinate errors are fractional and periodic:
``(pred − true + ½) mod 1 − ½``, so 0.99 vs 0.01 is an error of 0.02, not 0.98.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure


def periodic_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a − b`` of fractional coordinates wrapped into [−0.5, 0.5) (0 ≡ 1)."""
    return (np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64) + 0.5) % 1.0 - 0.5


def circular_mean_difference(diff: np.ndarray) -> np.ndarray:
    """Mean of periodic differences (N, 3) on the circle, per axis, in [−0.5, 0.5)."""
    theta = 2.0 * np.pi * np.asarray(diff, dtype=np.float64)
    mean = np.arctan2(np.sin(theta).mean(axis=0), np.cos(theta).mean(axis=0)) / (2.0 * np.pi)
    return (mean + 0.5) % 1.0 - 0.5


@dataclass(frozen=True)
class AtomMatch:
    """A one-to-one matching of true atoms to predicted atoms.

    Attributes:
        true_index, pred_index: (K,) matched pairs, K = min(#true, #pred), ordered by true index.
        shift: (3,) fractional translation added to the predicted coordinates before matching.
        frac_error: (K, 3) periodic fractional error ``pred + shift − true`` per pair.
        distance: (K,) minimum-image distance of each pair in Å (original lattice).
        element_mismatches: pairs whose elements differ.
    """

    true_index: np.ndarray
    pred_index: np.ndarray
    shift: np.ndarray
    frac_error: np.ndarray
    distance: np.ndarray
    element_mismatches: int

    @property
    def rms_distance(self) -> float:
        """Root-mean-square pair distance in Å (NaN for an empty match)."""
        return float(np.sqrt(np.mean(self.distance**2))) if len(self.distance) else float("nan")


def _greedy(
    lattice: Lattice,
    true_frac: np.ndarray,
    true_z: np.ndarray,
    pred_frac: np.ndarray,
    pred_z: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Greedy one-to-one matching: repeatedly take the closest unmatched pair, same element
    before different elements. Returns true idx, pred idx, distances, mismatches."""
    dist = lattice.get_all_distances(true_frac, pred_frac)
    mismatch = true_z[:, None] != pred_z[None, :]
    order = np.lexsort((dist.ravel(), mismatch.ravel()))  # last key is the primary one
    n_true, n_pred = dist.shape
    used_t = np.zeros(n_true, dtype=bool)
    used_p = np.zeros(n_pred, dtype=bool)
    ti, pj = [], []
    for flat in order:
        i, j = divmod(int(flat), n_pred)
        if used_t[i] or used_p[j]:
            continue
        used_t[i] = used_p[j] = True
        ti.append(i)
        pj.append(j)
        if len(ti) == min(n_true, n_pred):
            break
    ti_a, pj_a = np.array(ti, dtype=np.int64), np.array(pj, dtype=np.int64)
    keep = np.argsort(ti_a)
    ti_a, pj_a = ti_a[keep], pj_a[keep]
    return ti_a, pj_a, dist[ti_a, pj_a], int(mismatch[ti_a, pj_a].sum())


def greedy_periodic_match(
    true: Structure, pred: Structure, *, align_origin: bool = True
) -> AtomMatch:
    """Match the atoms of ``pred`` to those of ``true`` one to one (see the module docstring).

    Works for any atom counts (K = min of the two); the reconstruction experiment uses it for
    pairs with equal counts, as the paper does.
    """
    if len(true) == 0 or len(pred) == 0:
        raise ValueError("cannot match an empty structure")
    lattice = true.lattice
    tf, tz = true.frac_coords, np.array(true.atomic_numbers)
    pf, pz = pred.frac_coords, np.array(pred.atomic_numbers)

    shifts = [np.zeros(3)]
    if align_origin:
        # anchor on the rarest element of the original: fewest candidate shifts to try
        values, counts = np.unique(tz, return_counts=True)
        present = [(c, z) for z, c in zip(values, counts, strict=True) if np.any(pz == z)]
        anchor_z = min(present)[1] if present else None
        i0 = int(np.flatnonzero(tz == anchor_z)[0]) if anchor_z is not None else 0
        candidates = np.flatnonzero(pz == anchor_z) if anchor_z is not None else range(len(pz))
        shifts += [periodic_difference(tf[i0], pf[j]) for j in candidates]

    best = None
    for shift in shifts:
        result = _greedy(lattice, tf, tz, pf + shift, pz)
        cost = (result[3], float(np.sum(result[2] ** 2)))
        if best is None or cost < best[0]:
            best = (cost, shift, result)
    assert best is not None
    cost, shift, result = best
    if align_origin:
        # refine: move by the mean residual of the matched pairs, keep it if it helps
        residual = periodic_difference(tf[result[0]], pf[result[1]] + shift)
        refined = shift + circular_mean_difference(residual)
        again = _greedy(lattice, tf, tz, pf + refined, pz)
        if (again[3], float(np.sum(again[2] ** 2))) <= cost:
            shift, result = refined, again
    ti, pj, dist, mismatches = result
    shift = periodic_difference(shift, 0.0)
    error = periodic_difference(pf[pj] + shift, tf[ti])
    return AtomMatch(ti, pj, shift, error, dist, mismatches)


@dataclass(frozen=True)
class PairComparison:
    """How a reconstructed crystal differs from its original.

    Attributes:
        n_true, n_pred: atom counts.
        same_composition: identical per-element atom counts.
        lattice_rel_error: (3,) relative errors of a, b, c: ``(pred − true) / true``.
        angle_error: (3,) errors of α, β, γ in degrees.
        match: greedy atom matching, only when the atom counts are equal (else ``None``).
    """

    n_true: int
    n_pred: int
    same_composition: bool
    lattice_rel_error: np.ndarray
    angle_error: np.ndarray
    match: AtomMatch | None


def compare_structures(
    true: Structure, pred: Structure, *, align_origin: bool = True
) -> PairComparison:
    """Lattice errors always, atom matching when the atom counts agree (the paper's rule)."""
    t_abc, p_abc = np.array(true.lattice.abc), np.array(pred.lattice.abc)
    match = (
        greedy_periodic_match(true, pred, align_origin=align_origin)
        if len(true) == len(pred)
        else None
    )
    return PairComparison(
        n_true=len(true),
        n_pred=len(pred),
        same_composition=true.composition == pred.composition,
        lattice_rel_error=(p_abc - t_abc) / t_abc,
        angle_error=np.array(pred.lattice.angles) - np.array(true.lattice.angles),
        match=match,
    )


def whisker_bounds(values: np.ndarray, whis: float = 1.5) -> tuple[float, float]:
    """Tukey's box-plot whisker limits ``[Q1 − whis·IQR, Q3 + whis·IQR]`` (NaNs ignored)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    q1, q3 = np.percentile(v, [25, 75])
    iqr = q3 - q1
    return float(q1 - whis * iqr), float(q3 + whis * iqr)


def effective_rate(values: np.ndarray, whis: float = 1.5) -> float:
    """The paper's "effective rate": the share of values inside the box-plot whiskers.

    It measures how many errors are *not outliers of their own distribution*, so it says
    little about their size — report it next to :func:`plain_rate`. NaN for no values.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan")
    lo, hi = whisker_bounds(v, whis)
    return float(np.mean((v >= lo) & (v <= hi)))


def plain_rate(values: np.ndarray, tolerance: float) -> float:
    """Share of values with ``|value| ≤ tolerance`` (NaN for no values)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan")
    return float(np.mean(np.abs(v) <= tolerance))


MATCHER_TOLERANCES = {"stol": 0.5, "angle_tol": 10.0, "ltol": 0.3}
"""DiffCSP's StructureMatcher tolerances (CDVAE's reconstruction protocol)."""


def cell_formula(structure: Structure) -> str:
    """The cell's formula with its actual atom counts (e.g. ``Na4Cl4``), what CSP is given."""
    return structure.composition.formula.replace(" ", "")


def match_candidate(pred: Structure, true: Structure, matcher=None) -> float | None:
    """Normalised RMS distance of a match under DiffCSP's tolerances, or ``None``."""
    if matcher is None:
        matcher = StructureMatcher(**MATCHER_TOLERANCES)
    try:
        out = matcher.get_rms_dist(pred, true)
    except Exception:  # degenerate candidates can break the matcher's lattice search
        return None
    return None if out is None else float(out[0])
