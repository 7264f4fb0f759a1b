"""Tests for the auxiliary loss on x̂_0's neighbour distances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pccd import representation as rep
from pccd.pair_loss import (
    NEIGHBOUR_CUTOFF,
    atom_positions,
    block_labels,
    lattice_matrices,
    pair_distance_loss,
    pair_distances,
)
from tests.conftest import KNOWN


def _batch(names):
    arrays = [rep.encode(KNOWN[name]())[0] for name in names]
    return torch.from_numpy(np.stack(arrays))


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_blocks_lattice_and_distances_match_the_structure(name):
    """Atom count from the rows, and the neighbour distances, are the crystal's own."""
    structure = KNOWN[name]()
    x0 = _batch([name])
    labels, counts = block_labels(x0)
    assert int(counts[0]) == len(structure)
    np.testing.assert_array_equal(labels[0].numpy(), rep.row_blocks(len(structure)))
    lattice = lattice_matrices(x0, rep.RepresentationConfig())[0].numpy()
    np.testing.assert_allclose(np.linalg.det(lattice), structure.volume, rtol=1e-4)
    positions = atom_positions(x0, labels, len(structure))
    d = pair_distances(positions, lattice_matrices(x0, rep.RepresentationConfig()))[0].numpy()
    frac = positions[0].numpy()
    expected = structure.lattice.get_all_distances(frac, frac)
    near = expected < NEIGHBOUR_CUTOFF
    np.testing.assert_allclose(d[near], expected[near], atol=2e-3)


def test_loss_is_zero_for_the_truth_and_grows_with_displacement():
    x0 = _batch(["nacl", "si", "hexagonal"])
    cfg = rep.RepresentationConfig()
    assert float(pair_distance_loss(x0, x0, cfg)) == pytest.approx(0.0, abs=1e-5)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for scale in (0.01, 0.05):
        noisy = x0.clone()
        noisy[:, 0] += scale * torch.randn(noisy[:, 0].shape, generator=gen)
        noisy.requires_grad_(True)
        loss = pair_distance_loss(noisy, x0, cfg)
        loss.backward()
        assert noisy.grad is not None and float(noisy.grad[:, 0].abs().sum()) > 0
        losses.append(float(loss))
    assert 0 < losses[0] < losses[1]
