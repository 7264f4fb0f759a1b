"""Training the point-cloud family: crystals → augmented arrays → diffusion loss, in Lightning.

One module per concern, so each can be read (and changed) without the others:

* :mod:`.config` — :class:`TrainConfig`, the recipe saved with every checkpoint and model;
* :mod:`.dataset` — :class:`CrystalDataset` (encoding with augmentation) and :func:`collate`;
* :mod:`.module` — :class:`PCCDLightning` (loss, EMA, optimiser) and the callbacks;
* :mod:`.run` — :func:`train`, which wires them into a Lightning ``Trainer`` and resumes;
* :mod:`.checkpoints` — packing, unpacking and exporting a checkpoint, which is not training.

The names below are the package's public surface; import them from ``pccd.training``.
"""

from __future__ import annotations

from pccd.model import UNetConfig
from pccd.training.checkpoints import (
    LEGACY_PACK_FILES,
    MAX_FILE_MB,
    PACK_MANIFEST,
    PACK_SHARD,
    export_pretrained,
    pack_checkpoint,
    trained_conditions,
    unpack_checkpoint,
)
from pccd.training.config import TrainConfig, fit_conditions_to_weights
from pccd.training.dataset import (
    ATOM_ORDERS,
    CrystalDataset,
    band_gap_contrast_rows,
    collate,
    contrast_sampler,
)
from pccd.training.module import AtomicCheckpoint, PCCDLightning, RunTimeLimit, lr_factor
from pccd.training.run import train

__all__ = [
    "ATOM_ORDERS",
    "LEGACY_PACK_FILES",
    "MAX_FILE_MB",
    "PACK_MANIFEST",
    "PACK_SHARD",
    "AtomicCheckpoint",
    "CrystalDataset",
    "PCCDLightning",
    "RunTimeLimit",
    "TrainConfig",
    "UNetConfig",
    "band_gap_contrast_rows",
    "collate",
    "contrast_sampler",
    "export_pretrained",
    "fit_conditions_to_weights",
    "lr_factor",
    "pack_checkpoint",
    "train",
    "trained_conditions",
    "unpack_checkpoint",
]
