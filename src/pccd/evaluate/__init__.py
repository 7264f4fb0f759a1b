"""Evaluation of generated and reconstructed crystals (metrics that take pymatgen Structures)."""

from pccd.evaluate.generation_metrics import (
    atom_count_wasserstein,
    has_exact_elements,
    is_structurally_valid,
    min_interatomic_distance,
)

__all__ = [
    "atom_count_wasserstein",
    "has_exact_elements",
    "is_structurally_valid",
    "min_interatomic_distance",
]
