"""An auxiliary training loss on the neighbour distances of the clean-array estimate x̂_0.

Why: the raw samples' geometry fails atom by atom — whatever the cell size, each atom has a
~25–35% chance of a neighbour at under 0.7 of the bond length (BENCHMARKS, issue 11,
"Where the geometry fails") — while the L1 ε loss scores every row's coordinate on its own and
never a distance between atoms. In training the atoms' row blocks and the true lattice are
known, so the distances between x̂_0's atoms can be compared with the true ones directly.

It runs inside the training step on (B, 3, 128, 3) batches of the ``spread`` layout (the
encoder's blocks; :func:`pccd.representation.row_blocks`); the lattice is decoded by the
representation's own code.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pymatgen.core import Lattice

from pccd import representation as rep

NEIGHBOUR_CUTOFF = 4.0
"""Å: true pairs closer than this are scored (the first coordination shells of MP crystals)."""


def block_labels(x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 128) atom index of each row of clean arrays, and (B,) atom counts.

    Rows of one atom hold the same coordinates and no two atoms share all three (the decoder
    refuses atoms < 0.5 Å apart), so a new atom starts wherever channel 0 changes.
    """
    starts = (x0[:, 0, 1:] != x0[:, 0, :-1]).any(dim=-1)
    labels = torch.cat([torch.zeros_like(starts[:, :1]), starts], dim=1).long().cumsum(dim=1)
    return labels, labels[:, -1] + 1


def lattice_matrices(x0: torch.Tensor, config: rep.RepresentationConfig) -> torch.Tensor:
    """(B, 3, 3) lattice vectors (rows, Å) of clean arrays, decoded as the decoder does
    (:func:`pccd.representation.decode_lattice`); data, so no gradient is needed."""
    arrays = x0.detach().cpu().double().numpy()
    matrices = [
        Lattice.from_parameters(*np.concatenate(rep.decode_lattice(a, config))).matrix
        for a in arrays
    ]
    return torch.from_numpy(np.stack(matrices)).to(x0.device, torch.float32)


def atom_positions(x: torch.Tensor, labels: torch.Tensor, n_max: int) -> torch.Tensor:
    """(B, n_max, 3) fractional positions: the circular mean of each atom's rows of channel 0."""
    theta = math.pi * (x[:, 0] + 1.0)  # [-1, 1) → one turn
    index = labels[:, :, None].expand(-1, -1, 3)
    sums = [
        torch.zeros(x.shape[0], n_max, 3, dtype=x.dtype, device=x.device).scatter_add(1, index, f)
        for f in (torch.cos(theta), torch.sin(theta))
    ]
    return torch.atan2(sums[1], sums[0]) / (2.0 * math.pi)


_IMAGES = torch.tensor(
    [[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=torch.float32
)


def pair_distances(frac: torch.Tensor, lattice: torch.Tensor) -> torch.Tensor:
    """(B, n, n) minimum-image distances in Å between positions: each fractional difference
    wrapped into [-½, ½), then the nearest of its 27 neighbouring images (exact for cells that
    are not extremely sheared, which Niggli reduction rules out)."""
    delta = frac[:, :, None, :] - frac[:, None, :, :]
    delta = delta - torch.round(delta)
    images = delta[..., None, :] + _IMAGES.to(frac.device, frac.dtype)  # (B, n, n, 27, 3)
    cart = images @ lattice[:, None, None]
    return torch.linalg.vector_norm(cart, dim=-1).amin(dim=-1)


def pair_distance_loss(
    x0_hat: torch.Tensor, x0: torch.Tensor, config: rep.RepresentationConfig
) -> torch.Tensor:
    """Mean relative error |d̂_ij − d_ij| / d_ij over the true neighbour pairs (d < 4 Å).

    Positions of x̂_0's atoms are their rows' circular means over the true blocks; both sets of
    distances are measured in the true lattice, so the loss sees relative placement only.
    Returns 0 for a batch without neighbour pairs (single-atom cells).
    """
    labels, counts = block_labels(x0)
    n_max = int(counts.max())
    lattice = lattice_matrices(x0, config)
    true = pair_distances(atom_positions(x0, labels, n_max), lattice)
    estimate = pair_distances(atom_positions(x0_hat.float(), labels, n_max), lattice)
    atoms = torch.arange(n_max, device=x0.device)
    real = atoms[None, :] < counts[:, None]
    scored = real[:, :, None] & real[:, None, :] & (atoms[:, None] < atoms[None, :])
    scored &= true < NEIGHBOUR_CUTOFF
    if not bool(scored.any()):
        return x0_hat.sum() * 0.0
    error = (estimate - true).abs() / true.clamp(min=0.1)
    return error[scored].mean()
