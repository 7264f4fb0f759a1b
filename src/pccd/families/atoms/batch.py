"""Crystals as dense atom batches: types, fractional coordinates, scaled lattice, mask.

:class:`AtomArrays` holds a whole split padded to :data:`MAX_ATOMS` atoms (a few MB for 40k
crystals), built once from a :class:`pccd.data.CrystalTable`; :meth:`AtomArrays.batch` slices
a batch and trims the padding to the batch's largest cell, and :func:`size_buckets` groups
crystals of similar size so little of a batch is padding (the pair cost grows with N²).

Cells are Niggli-reduced first: one canonical cell per crystal keeps the lattice target
unambiguous (DiffCSP's choice).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pccd.conditioning import MAX_ATOMS, MAX_SLOTS


@dataclass
class AtomBatch:
    """One batch of cells, padded to its largest one (all tensors on one device)."""

    types: torch.Tensor  # (B, N) Z, 0 on padding
    frac: torch.Tensor  # (B, N, 3) in [0, 1)
    lattice: torch.Tensor  # (B, 3, 3) rows a, b, c divided by (N·v0)^(1/3)
    mask: torch.Tensor  # (B, N) bool, True for real atoms
    slots: torch.Tensor  # (B, 3) element list, ascending Z, 0 = empty
    band_gap: torch.Tensor  # (B,) eV, NaN unknown
    stability: torch.Tensor  # (B,) 0 / 1, −1 unknown

    def to(self, device: torch.device | str) -> AtomBatch:
        return AtomBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def lattice_scale(num_atoms: np.ndarray | torch.Tensor, volume_per_atom: float):
    """(N·v0)^(1/3) in Å: the edge of a cube holding N atoms at the typical density."""
    return (num_atoms * volume_per_atom) ** (1 / 3)


def element_slots(numbers: np.ndarray) -> np.ndarray:
    """(3,) the distinct atomic numbers ascending, padded with 0."""
    zs = np.unique(numbers)
    out = np.zeros(MAX_SLOTS, dtype=np.int64)
    out[: len(zs)] = zs
    return out


@dataclass
class AtomArrays:
    """A split as padded numpy arrays (see the module docstring)."""

    types: np.ndarray
    frac: np.ndarray
    lattice: np.ndarray
    num_atoms: np.ndarray
    slots: np.ndarray
    band_gap: np.ndarray
    stability: np.ndarray

    def __len__(self) -> int:
        return len(self.num_atoms)

    @classmethod
    def from_table(cls, table, volume_per_atom: float, niggli: bool = True) -> AtomArrays:
        """Pad every crystal of a :class:`pccd.data.CrystalTable` (Niggli-reduced if asked)."""
        n = len(table)
        types = np.zeros((n, MAX_ATOMS), dtype=np.int64)
        frac = np.zeros((n, MAX_ATOMS, 3), dtype=np.float32)
        lattice = np.zeros((n, 3, 3), dtype=np.float32)
        num_atoms = table.num_sites().astype(np.int64)
        slots = np.zeros((n, MAX_SLOTS), dtype=np.int64)
        for i in range(n):
            if niggli:
                s = table.structure(i).get_reduced_structure("niggli")
                f, z, lat = s.frac_coords % 1.0, np.asarray(s.atomic_numbers), s.lattice.matrix
            else:
                (f, z), lat = table.sites(i), table.lattices[i]
                f = f % 1.0
            k = len(z)
            types[i, :k] = z
            frac[i, :k] = f
            lattice[i] = lat / lattice_scale(k, volume_per_atom)
            slots[i] = element_slots(z)
        return cls(
            types, frac, lattice, num_atoms, slots,
            np.asarray(table.band_gap, dtype=np.float32),
            np.asarray(table.stability, dtype=np.int64),
        )  # fmt: skip

    def batch(self, index: np.ndarray) -> AtomBatch:
        """The crystals at ``index`` as tensors trimmed to their largest cell."""
        width = int(self.num_atoms[index].max())
        mask = np.arange(width)[None, :] < self.num_atoms[index][:, None]
        return AtomBatch(
            types=torch.from_numpy(self.types[index, :width]),
            frac=torch.from_numpy(self.frac[index, :width]),
            lattice=torch.from_numpy(self.lattice[index]),
            mask=torch.from_numpy(mask),
            slots=torch.from_numpy(self.slots[index]),
            band_gap=torch.from_numpy(self.band_gap[index]),
            stability=torch.from_numpy(self.stability[index]),
        )

    def to_npz(self, path) -> None:
        np.savez_compressed(path, **{k: getattr(self, k) for k in self.__dataclass_fields__})

    @classmethod
    def from_npz(cls, path) -> AtomArrays:
        with np.load(path) as f:
            return cls(**{k: f[k] for k in cls.__dataclass_fields__})


def size_buckets(
    num_atoms: np.ndarray, batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """One epoch of batches, each of crystals of similar size, in random order.

    Crystals are shuffled, stably sorted by atom count, cut into batches, and the batches
    shuffled: every crystal once per epoch, little padding, no fixed batch composition.
    """
    order = rng.permutation(len(num_atoms))
    order = order[np.argsort(num_atoms[order], kind="stable")]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]
