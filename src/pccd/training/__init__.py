"""Training the point-cloud family: crystals → augmented arrays → diffusion loss, in Lightning.

One module per concern, so each can be read (and changed) without the others:

* :mod:`.config` — :class:`TrainConfig`, the recipe saved with every checkpoint and model;
* :mod:`.dataset` — :class:`CrystalDataset` (encoding with augmentation) and :func:`collate`;
* :mod:`.module` — :class:`PCCDLightning` (loss, EMA, optimiser) and the callbacks;
* :mod:`.run` — :func:`train`, which wires them into a Lightning ``Trainer`` and resumes;
* :mod:`.checkpoints` — packing, unpacking and exporting a checkpoint, which is not training.

The names below are the package's public surface; import them from ``pccd.training``.
"""

import importlib

_HOMES = {
    "UNetConfig": "pccd.model",
    "LEGACY_PACK_FILES": "pccd.training.checkpoints",
    "MAX_FILE_MB": "pccd.training.checkpoints",
    "PACK_MANIFEST": "pccd.training.checkpoints",
    "PACK_SHARD": "pccd.training.checkpoints",
    "export_pretrained": "pccd.training.checkpoints",
    "pack_checkpoint": "pccd.training.checkpoints",
    "trained_conditions": "pccd.training.checkpoints",
    "unpack_checkpoint": "pccd.training.checkpoints",
    "TrainConfig": "pccd.training.config",
    "fit_conditions_to_weights": "pccd.training.config",
    "ATOM_ORDERS": "pccd.training.dataset",
    "CrystalDataset": "pccd.training.dataset",
    "band_gap_contrast_rows": "pccd.training.dataset",
    "collate": "pccd.training.dataset",
    "contrast_sampler": "pccd.training.dataset",
    "AtomicCheckpoint": "pccd.training.module",
    "PCCDLightning": "pccd.training.module",
    "RunTimeLimit": "pccd.training.module",
    "lr_factor": "pccd.training.module",
    "train": "pccd.training.run",
}
"""Where each name of :data:`__all__` lives: imported on first use (PEP 562), so that packing,
unpacking or exporting a checkpoint (:mod:`.checkpoints`) and encoding crystals
(:mod:`.dataset`) do not load Lightning, which only :mod:`.module` and :mod:`.run` need: 4.7 s
of each ``pccd checkpoint pack`` and ``pccd export`` of a point-cloud run."""


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_HOMES)
