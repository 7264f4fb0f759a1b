"""Sampling-time repulsion: keep decoded atoms apart while the reverse chain runs (an option).

The shipped networks place atoms of different row blocks with too little regard for each
other (FIELD_NOTES: most implausible samples have two *different* atoms at ~0.45 of their
bonding distance). Until a network learns that, this option corrects the chain's estimate of
the clean array x̂_0 in the later steps: the rows are grouped into atoms exactly as the decoder
groups them (the formula's row blocks when the counts are known, otherwise the decoder's
periodic DBSCAN), and any two atoms closer than ``tau · (r_i + r_j)`` (covalent radii, periodic
images included) are pushed apart along their separation, each by half the deficit, for a few
sweeps. The sampler then continues from the corrected x̂_0, so the network can adapt the rest
of the crystal to the move.

This is guidance, not the model: figures obtained with it are reported separately from the
raw model's (``--repulsion`` off by default).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase.data import covalent_radii
from pymatgen.core import Lattice
from pymatgen.core.periodic_table import Element

from pccd import representation as rep

SWEEPS = 5
"""Push-apart sweeps per correction (each fixes pairs found at its start)."""


def _atom_rows(
    x0: np.ndarray,
    frac: np.ndarray,
    els: Sequence[Element],
    lattice: Lattice,
    counts: Sequence[int] | None,
    config: rep.RepresentationConfig,
) -> tuple[list[np.ndarray], list[Element]]:
    """Rows and element of each atom, grouped as the decoder would group them."""
    scores = x0[1, :, : len(els)]
    labels = rep.atom_labels(frac, scores, lattice, config, counts)
    rows, species = [], []
    for k in range(int(labels.max()) + 1):
        member = np.flatnonzero(labels == k)
        if len(member):
            rows.append(member)
            species.append(els[int(np.argmax(scores[member].sum(axis=0)))])
    return rows, species


def repel(
    x0: np.ndarray,
    elements: Sequence[Element],
    config: rep.RepresentationConfig,
    *,
    tau: float = 0.85,
    counts: Sequence[int] | None = None,
) -> np.ndarray:
    """A copy of one clean-array estimate (3, 128, 3) with atoms pushed ≥ ``tau`` bonds apart.

    Arrays whose lattice does not decode, or with fewer than two atoms, come back unchanged.
    """
    x = np.array(x0, dtype=np.float64)
    lengths, angles = rep.decode_lattice(x, config)
    with np.errstate(all="ignore"):
        lattice = Lattice.from_parameters(*lengths, *angles)
        if not np.isfinite(lattice.volume) or lattice.volume < config.min_volume:
            return np.array(x0, copy=True)
    frac = ((np.clip(x[0], -1.0, 1.0) + 1.0) / 2.0) % 1.0
    rows, species = _atom_rows(x, frac, list(elements), lattice, counts, config)
    if len(rows) < 2:
        return np.array(x0, copy=True)
    centres = np.array([rep.circular_mean(frac[r]) for r in rows])
    radii = covalent_radii[[el.Z for el in species]]
    target = tau * (radii[:, None] + radii[None, :])
    matrix, inverse = lattice.matrix, np.linalg.inv(lattice.matrix)
    shift = np.zeros_like(centres)
    for _ in range(SWEEPS):
        diff = (centres + shift)[:, None, :] - (centres + shift)[None, :, :]
        diff -= np.round(diff)  # minimum image (exact for the near-orthogonal, reduced cells)
        cart = diff @ matrix
        dist = np.linalg.norm(cart, axis=-1)
        np.fill_diagonal(dist, np.inf)
        deficit = np.where(dist < target, target - dist, 0.0)
        if not deficit.any():
            break
        unit = cart / np.maximum(dist, 1e-6)[..., None]
        push = 0.5 * (deficit[..., None] * unit).sum(axis=1)  # atom i moves away from each j
        shift += push @ inverse
    for r, d in zip(rows, shift, strict=True):
        x[0, r] = (x[0, r] + 2.0 * d + 1.0) % 2.0 - 1.0  # rows move with their atom, wrapped
    return x.astype(np.asarray(x0).dtype)
