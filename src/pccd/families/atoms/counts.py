"""How many atoms a de novo cell gets: the training split's p(N | number of elements).

Why a distribution and not a prediction: on the formula-split val set, the most common train
count of a crystal's own chemical system is right only 11.6% of the time (FIELD_NOTES), so
counts must be drawn to match the data's distribution (judged by the atom-count Wasserstein
distance), not looked up. The composition within N is then the model's choice (type diffusion).
"""

from __future__ import annotations

import numpy as np
import torch

from pccd.conditioning import MAX_ATOMS, MAX_SLOTS


class AtomCountPrior:
    """p(N | k elements) for k = 1..3, N = k..16, as counts read off a training split."""

    def __init__(self, counts: np.ndarray) -> None:
        counts = np.asarray(counts, dtype=np.float64)
        if counts.shape != (MAX_SLOTS + 1, MAX_ATOMS + 1):
            raise ValueError(f"count table must be {(MAX_SLOTS + 1, MAX_ATOMS + 1)}")
        for k in range(1, MAX_SLOTS + 1):
            counts[k, :k] = 0  # a cell holds at least one atom per element
            if counts[k].sum() == 0:
                counts[k, k:] = 1  # no data for k elements: every count allowed
        self.counts = counts

    @classmethod
    def from_arrays(cls, num_atoms: np.ndarray, slots: np.ndarray) -> AtomCountPrior:
        table = np.zeros((MAX_SLOTS + 1, MAX_ATOMS + 1))
        np.add.at(table, ((slots > 0).sum(1), num_atoms), 1)
        return cls(table)

    def to_list(self) -> list[list[float]]:
        return self.counts.tolist()

    def draw(self, num_elements: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B,) atom counts for cells with ``num_elements`` (B,) distinct elements."""
        probs = torch.as_tensor(self.counts, dtype=torch.float64)[num_elements.long()]
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
