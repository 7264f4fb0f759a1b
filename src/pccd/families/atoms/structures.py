"""Atom batches → pymatgen structures (the family's one crystal-code boundary)."""

from __future__ import annotations

import numpy as np
from pymatgen.core import Lattice, Structure

from pccd.families.atoms.batch import AtomBatch, lattice_scale
from pccd.generator import DecodeFailure, DecodeReason

MAX_LENGTH = 100.0
"""Longest cell edge (Å) a sample may have; the bulk training split's longest is ~50 Å."""
MIN_FLATNESS = 0.05
"""Smallest V / (a·b·c) of a cell: below it the cell is nearly flat (real Niggli cells ≥ 0.4),
and neighbour searches over it would need millions of images."""


def cell_failure(lattice: np.ndarray, num_atoms: int) -> DecodeFailure | None:
    """Why a lattice matrix (Å) is no cell for ``num_atoms`` atoms, or None if it is one."""
    if not np.isfinite(lattice).all():
        return DecodeFailure(DecodeReason.NON_FINITE, "lattice has non-finite entries")
    lengths = np.linalg.norm(lattice, axis=1)
    volume = abs(float(np.linalg.det(lattice)))
    if lengths.max() > MAX_LENGTH or lengths.min() < 0.5:
        detail = f"cell edges {np.round(lengths, 2).tolist()} Å outside 0.5–{MAX_LENGTH:g} Å"
        return DecodeFailure(DecodeReason.DEGENERATE_LATTICE, detail)
    flatness = volume / float(np.prod(lengths))
    if flatness < MIN_FLATNESS:
        detail = f"cell nearly flat (V/abc = {flatness:.3f} < {MIN_FLATNESS}) for {num_atoms} atoms"
        return DecodeFailure(DecodeReason.DEGENERATE_LATTICE, detail)
    return None


def to_structures(batch: AtomBatch, volume_per_atom: float) -> list[Structure | DecodeFailure]:
    """Each cell as a ``Structure``, or the typed reason it is not one."""
    out: list[Structure | DecodeFailure] = []
    for i in range(batch.types.shape[0]):
        m = batch.mask[i].numpy()
        n = int(m.sum())
        lat = batch.lattice[i].double().numpy() * lattice_scale(n, volume_per_atom)
        failure = cell_failure(lat, n)
        if failure is not None:
            out.append(failure)
            continue
        z = batch.types[i].numpy()[m].tolist()
        frac = batch.frac[i].double().numpy()[m] % 1.0
        out.append(Structure(Lattice(lat), z, frac))
    return out
