"""Is a generated crystal's geometry plausible *before* any relaxation?

A chemist opening a CIF first looks at the shortest bonds. The test used throughout pccd: for
each crystal the smallest ratio ``d_ij / (r_i + r_j)`` over every atom pair, periodic images
included (an atom and its own image count too), with ``r`` the covalent radii of
``ase.data.covalent_radii`` (Cordero et al. 2008). A crystal is *plausible* when that ratio is
≥ 0.7. On 1,000 Materials Project val crystals 99.2% pass and the median ratio is 0.93
(FIELD_NOTES), so the threshold rejects atoms at about half their bonding distance, not merely
tight real bonds.

The figures are meant for raw decoded samples: a relaxation moves atoms apart and would hide
what the model made, so callers never mix relaxed and raw structures in one summary. A sample
that did not decode is passed as ``None`` and counts as implausible and not symmetric, so every
share has every sample in its denominator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from ase.data import covalent_radii
from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

PLAUSIBLE_RATIO = 0.7
"""Smallest d/(r_i + r_j) of a plausible crystal (99.2% of MP val crystals pass)."""
SYMPREC = 0.1
"""Symmetry tolerance in Å for the space-group figure (as the data's ``spacegroup.number``)."""


def covalent_ratio(structure: Structure) -> float:
    """Smallest ``d_ij / (r_i + r_j)`` over all pairs and periodic images (dimensionless).

    Searches neighbours out to twice the largest radius sum and widens the sphere until a
    pair is found, so sparse cells (a lone atom in a long cell) still get their true value.
    """
    radii = covalent_radii[np.asarray(structure.atomic_numbers)]
    cutoff = 2.0 * 2.0 * float(radii.max())
    for _ in range(8):
        centres, neighbours, _, dists = structure.get_neighbor_list(cutoff)
        keep = dists > 1e-8
        if keep.any():
            ratio = dists[keep] / (radii[centres[keep]] + radii[neighbours[keep]])
            return float(ratio.min())
        cutoff *= 2.0
    return math.inf


def space_group_number(structure: Structure, symprec: float = SYMPREC) -> int:
    """International space-group number (1 when spglib cannot analyse the cell)."""
    try:
        return int(SpacegroupAnalyzer(structure, symprec=symprec).get_space_group_number())
    except Exception:  # spglib gives up on pathological cells; those are not symmetric
        return 1


@dataclass(frozen=True)
class GeometrySummary:
    """Geometry figures over a sample set; every share counts every sample.

    Attributes:
        n: samples, decoded or not.
        decoded: samples that decoded into a structure.
        plausible_share: samples with ratio ≥ 0.7, over ``n``.
        median_ratio: median smallest covalent ratio over the decoded samples (NaN if none).
        symmetric_share: samples with a space group above P1 and P-1, over ``n``.
        above_p1_share: samples with any symmetry beyond P1 (P-1 included), over ``n``: the
            atom model's issue states its symmetry target this way.
    """

    n: int
    decoded: int
    plausible_share: float
    median_ratio: float
    symmetric_share: float
    above_p1_share: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def is_symmetric(space_group: int) -> bool:
    """Above P-1: a space group that constrains positions (not P1 = 1 or P-1 = 2)."""
    return space_group > 2


def summarize_geometry(
    ratios: Sequence[float | None], space_groups: Sequence[int | None]
) -> GeometrySummary:
    """Summarise per-sample ratios and space groups (``None`` = sample did not decode)."""
    if len(ratios) != len(space_groups):
        raise ValueError(f"{len(ratios)} ratios but {len(space_groups)} space groups")
    n = len(ratios)
    decoded = [r for r in ratios if r is not None]
    plausible = sum(1 for r in decoded if r >= PLAUSIBLE_RATIO)
    symmetric = sum(1 for g in space_groups if g is not None and is_symmetric(g))
    above_p1 = sum(1 for g in space_groups if g is not None and g > 1)
    return GeometrySummary(
        n=n,
        decoded=len(decoded),
        plausible_share=plausible / n if n else math.nan,
        median_ratio=float(np.median(decoded)) if decoded else math.nan,
        symmetric_share=symmetric / n if n else math.nan,
        above_p1_share=above_p1 / n if n else math.nan,
    )


def geometry_summary(structures: Sequence[Structure | None]) -> GeometrySummary:
    """Geometry figures of raw samples; ``None`` entries are samples that failed to decode."""
    ratios = [None if s is None else covalent_ratio(s) for s in structures]
    groups = [None if s is None else space_group_number(s) for s in structures]
    return summarize_geometry(ratios, groups)


def describe_structure(structure: Structure) -> dict[str, object]:
    """Summary-row fields of one crystal: formula, atoms, space group (symprec 0.1 Å), density
    (g/cm³), shortest distance (Å), smallest covalent ratio and the plausibility verdict."""
    try:
        space_group = SpacegroupAnalyzer(structure, symprec=SYMPREC).get_space_group_symbol()
    except Exception:  # spglib can fail on pathological cells; the row still gets written
        space_group = ""
    dmin = ""
    if len(structure) > 1:
        dm = structure.distance_matrix
        dmin = f"{dm[np.triu_indices(len(structure), 1)].min():.3f}"
    ratio = covalent_ratio(structure)
    return {
        "formula": structure.composition.reduced_formula,
        "atoms": len(structure),
        "space_group": space_group,
        "density": f"{structure.density:.4f}",
        "min_distance": dmin,
        "covalent_ratio": f"{ratio:.3f}",
        "plausible": int(ratio >= PLAUSIBLE_RATIO),
    }
