"""Training data: crystals → augmented (3, 128, 3) arrays and their conditions, batch by batch.

Augmentations keep the crystal the same crystal:

* atom order — the order of atoms over the 128 rows is arbitrary, so it is shuffled
  (``atom_order="by_element"`` shuffles within each element and keeps elements in slot order,
  ``"random"`` shuffles freely); ``"file"`` keeps the CIF's own order within each element
  (the authors' setting: no augmentation);
* a random periodic shift of all fractional coordinates (origin choice; off = the file's own
  origin, where many atoms sit on special positions such as 0 and ½);
* optionally a permutation of the occupied element slots together with their conditions.

Every random draw comes from torch's global RNG, so ``lightning.seed_everything`` makes a run
reproducible. Kept apart from the Lightning module because benchmarks and the reconstruction
experiment encode crystals the same way without training anything.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from pccd import data as data_mod
from pccd import representation as rep
from pccd.conditioning import METAL_THRESHOLD_EV, Conditions
from pccd.errors import InputError

_log = logging.getLogger(__name__)

ATOM_ORDERS = ("by_element", "random", "file")


def band_gap_contrast_rows(table: data_mod.CrystalTable) -> np.ndarray:
    """(n,) bool: rows with a known band gap whose element list, within ``table``, has known
    gaps on both sides of :data:`~pccd.conditioning.METAL_THRESHOLD_EV`.

    These are the rows where the gap is not already implied by the elements (Ti–O holds
    metallic Ti3O5 and insulating TiO2): a model conditioned on elements *and* gap can only
    learn from them what asking for a gap should change. Rows without a gap never qualify.
    """
    group, lists = table.element_list_groups()
    known = np.isfinite(table.band_gap)
    metal = known & (table.band_gap < METAL_THRESHOLD_EV)
    metals = np.bincount(group, weights=metal, minlength=len(lists))[group]
    labelled = np.bincount(group, weights=known, minlength=len(lists))[group]
    return known & (metals > 0) & (metals < labelled)


def contrast_sampler(contrast: np.ndarray, weight: float) -> WeightedRandomSampler:
    """Draws ``len(contrast)`` row indices with replacement, the rows where the bool mask
    ``contrast`` (:func:`band_gap_contrast_rows`) is True ``weight`` times as likely as the others.

    Draws come from torch's global RNG, which ``lightning.seed_everything`` seeds, so a run
    with the same seed sees the same rows.
    """
    weights = np.where(contrast, float(weight), 1.0)
    _log.info(
        "band-gap contrast rows: %d of %d, drawn %gx as often (%.1f%% of draws)",
        contrast.sum(),
        len(contrast),
        weight,
        100 * weights[contrast].sum() / weights.sum(),
    )
    return WeightedRandomSampler(weights.tolist(), len(contrast), replacement=True)


class CrystalDataset(Dataset):
    """Encodes crystals of a :class:`~pccd.data.CrystalTable` on the fly, with augmentation.

    Encoding costs ~70 µs per crystal, far less than a network step, so nothing is cached and
    every epoch sees fresh atom orders and origins. Randomness comes from torch's global RNG so
    ``lightning.seed_everything(seed, workers=True)`` makes runs reproducible.
    """

    def __init__(
        self,
        table: data_mod.CrystalTable,
        rep_config: rep.RepresentationConfig,
        *,
        augment: bool = True,
        atom_order: str = "by_element",
        random_shift: bool = True,
        slot_permutation: bool = False,
    ):
        if atom_order not in ATOM_ORDERS:
            raise InputError(f"atom_order must be one of {ATOM_ORDERS}, not {atom_order!r}")
        self.table = table
        self.rep_config = rep_config
        self.augment = augment
        self.atom_order = atom_order
        self.random_shift = random_shift
        self.slot_permutation = slot_permutation
        lattices = table.lattices
        self._lengths = np.linalg.norm(lattices, axis=2)
        a, b, c = lattices[:, 0], lattices[:, 1], lattices[:, 2]

        def angle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
            cos = np.sum(u * v, axis=1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1))
            return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))

        self._angles = np.stack([angle(b, c), angle(a, c), angle(a, b)], axis=1)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        frac, numbers = self.table.sites(i)
        zs = np.unique(numbers)  # ascending Z: the canonical slot order
        slots = np.searchsorted(zs, numbers)
        counts = np.bincount(slots, minlength=len(zs))
        if self.augment and self.slot_permutation and len(zs) > 1:
            perm = torch.randperm(len(zs)).numpy()  # new slot of old slot k is inv[k]
            inv = np.argsort(perm)
            zs, counts, slots = zs[perm], counts[perm], inv[slots]
        if self.augment:
            order = torch.randperm(len(numbers)).numpy()
            if self.atom_order == "file":
                order = np.argsort(slots, kind="stable")
            elif self.atom_order == "by_element":
                order = order[np.argsort(slots[order], kind="stable")]
            if self.random_shift:
                frac = frac + torch.rand(3, dtype=torch.float64).numpy()
        else:
            order = np.argsort(slots, kind="stable")
        x = rep.encode_arrays(
            frac[order], slots[order], self._lengths[i], self._angles[i], self.rep_config
        )
        elements = np.zeros(3, dtype=np.int64)
        elements[: len(zs)] = zs
        formula = np.zeros(3, dtype=np.int64)
        formula[: len(zs)] = counts
        return {
            "x": torch.from_numpy(x),
            "elements": torch.from_numpy(elements),
            "formula": torch.from_numpy(formula),
            "band_gap": torch.tensor(float(self.table.band_gap[i]), dtype=torch.float32),
            "magnetic": torch.tensor(int(self.table.magnetic[i]), dtype=torch.int64),
            "stability": torch.tensor(int(self.table.stability[i]), dtype=torch.int64),
        }


def collate(items: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, Conditions]:
    """Stack dataset items into the array batch and its :class:`Conditions`."""
    stacked = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    cond = Conditions(
        elements=stacked["elements"],
        band_gap=stacked["band_gap"],
        magnetic=stacked["magnetic"],
        formula=stacked["formula"],
        elements_dropped=torch.zeros(len(items), dtype=torch.bool),
        stability=stacked["stability"],
    )
    return stacked["x"], cond
