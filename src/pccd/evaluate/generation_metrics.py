"""Per-structure and distribution metrics of generated crystals.

Structural validity follows CDVAE (Xie et al., ICLR 2022): every interatomic distance ≥ 0.5 Å
and a cell volume ≥ 0.1 Å³; pccd's model-quality target adds a volume-per-atom window
(5–60 Å³), passed as ``volume_per_atom``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from pymatgen.core import Structure
from pymatgen.core.periodic_table import Element
from scipy.stats import wasserstein_distance


def min_interatomic_distance(structure: Structure) -> float:
    """Shortest distance (Å) between two sites, periodic images included.

    A one-atom cell's shortest distance is to its own image: the shortest lattice vector.
    """
    if len(structure) == 1:
        return float(min(structure.lattice.abc))
    dm = structure.distance_matrix
    return float(dm[np.triu_indices(len(structure), 1)].min())


def is_structurally_valid(
    structure: Structure | None,
    *,
    min_distance: float = 0.5,
    min_volume: float = 0.1,
    volume_per_atom: tuple[float, float] | None = None,
) -> bool:
    """True when all distances ≥ ``min_distance`` Å and the volume is sensible.

    ``None`` (a sample that did not decode) is invalid, so rates over all samples stay honest.
    """
    if structure is None:
        return False
    volume = structure.volume
    if not np.isfinite(volume) or volume < min_volume:
        return False
    if volume_per_atom is not None:
        v = volume / len(structure)
        if not volume_per_atom[0] <= v <= volume_per_atom[1]:
            return False
    return min_interatomic_distance(structure) >= min_distance


def has_exact_elements(
    structure: Structure | None, elements: Iterable[str | int | Element]
) -> bool:
    """True when the crystal contains exactly the requested elements, no more and no fewer."""
    if structure is None:
        return False
    wanted = {Element.from_Z(e) if isinstance(e, int) else Element(str(e)) for e in elements}
    return set(structure.composition.elements) == wanted


def atom_count_wasserstein(generated: Sequence[int], reference: Sequence[int]) -> float:
    """Wasserstein-1 distance between the atom-count distributions (in atoms)."""
    if len(generated) == 0:
        return float("inf")
    return float(wasserstein_distance(np.asarray(generated), np.asarray(reference)))
