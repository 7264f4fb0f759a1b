"""``train()``: a training run from data paths to ``last.ckpt``, fresh or resumed.

The one place that wires the pieces together: the recipe (:mod:`.config`), the data loaders
(:mod:`.dataset`), the Lightning module and callbacks (:mod:`.module`) and Lightning's
``Trainer``. A resumed run takes its recipe from the checkpoint, so its curve and its model
card stay one recipe; only how the hardware computes (devices, precision) may change.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from pccd import data as data_mod
from pccd.diffusion.sampling import DEFAULT_PRECISION, check_precision
from pccd.training.config import TrainConfig, fit_conditions_to_weights
from pccd.training.dataset import CrystalDataset, band_gap_contrast_rows, collate, contrast_sampler
from pccd.training.module import AtomicCheckpoint, PCCDLightning, RunTimeLimit

_log = logging.getLogger(__name__)

#: our precision names (shared with sampling) → Lightning's
_LIGHTNING_PRECISION = {"float32": "32-true", "bfloat16": "bf16-mixed"}


def _val_subset(table: data_mod.CrystalTable, n: int, seed: int) -> data_mod.CrystalTable:
    if n <= 0 or n >= len(table):
        return table
    idx = np.sort(np.random.default_rng(seed).choice(len(table), n, replace=False))
    return table.subset(idx)


def _warn_ignored_settings(asked: TrainConfig, saved: TrainConfig, ckpt: Path) -> None:
    """A resumed run keeps its checkpoint's settings (changing the recipe mid-run would make
    its curve and its model card wrong); say which asked-for settings that overrides, so an
    ``--option lr=…`` given on resume is not silently dropped. ``seed`` is excluded: resuming
    restores the random state from the checkpoint anyway."""
    a, s = asdict(asked), asdict(saved)

    def same(x: object, y: object) -> bool:  # tuples and lists, dict order: as JSON sees them
        return json.dumps(x, sort_keys=True, default=str) == json.dumps(
            y, sort_keys=True, default=str
        )

    differ = [
        f"{k} {a[k]!r} (checkpoint: {s[k]!r})"
        for k in a
        if k in s and k != "seed" and not same(a[k], s[k])
    ]
    if differ:
        _log.warning(
            "resuming %s with the checkpoint's settings; ignored: %s", ckpt, "; ".join(differ)
        )


def train(
    train_path: str | Path,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    val_path: str | Path | None = None,
    max_minutes: float | None = None,
    max_steps: int = -1,
    checkpoint_minutes: float = 10.0,
    resume: bool = True,
    devices: int | str = 1,
    strategy: str = "auto",
    accelerator: str = "auto",
    precision: str = DEFAULT_PRECISION,
    progress: bool = True,
) -> Path:
    """Train (or continue training) a PCCD model; returns the path of ``last.ckpt``.

    With ``resume`` and an existing ``out_dir/last.ckpt`` the run continues exactly where the
    previous one stopped (weights, EMA, optimiser, step counter, cumulative wall time).

    ``precision`` is how the hardware computes, like ``devices``, so a resumed run may change
    it: ``"bfloat16"`` keeps fp32 weights, optimiser and loss but runs the network's
    convolutions and matmuls in bfloat16 (autocast). On CPUs with AMX/AVX512-BF16 that is
    1.54x faster per step for the wide preset (BENCHMARKS); elsewhere it is emulated and slower.
    """
    check_precision(precision)
    asked = config  # None: the caller asked for nothing, so a resume overrides nothing
    config = config or TrainConfig()
    out = Path(out_dir)
    ckpt = out / "last.ckpt"
    if resume and ckpt.exists():
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        config = TrainConfig(**saved["hyper_parameters"]["config"])
        if asked is not None:
            _warn_ignored_settings(asked, config, ckpt)
        config = fit_conditions_to_weights(config, saved["state_dict"])
        del saved
    L.seed_everything(config.seed, workers=True, verbose=False)
    rep_config = config.representation()

    label_counts: dict[str, int] = {}

    def loader(path: str | Path, *, shuffle: bool, n: int = 0) -> DataLoader:
        table = data_mod.load(path).table
        if shuffle:
            label_counts.update(
                rows=len(table),
                band_gap=int(np.isfinite(table.band_gap).sum()),
                magnetic=int((table.magnetic >= 0).sum()),
                stability=int((table.stability >= 0).sum()),
            )
        sampler = None
        if shuffle and config.band_gap_contrast_weight != 1.0:
            contrast = band_gap_contrast_rows(table)
            sampler = contrast_sampler(contrast, config.band_gap_contrast_weight)
            label_counts["band_gap_contrast"] = int(contrast.sum())
        if n:
            table = _val_subset(table, n, config.seed)
        dataset = CrystalDataset(
            table,
            rep_config,
            augment=shuffle,
            atom_order=config.atom_order,
            random_shift=config.random_shift,
            slot_permutation=config.slot_permutation,
        )
        return DataLoader(
            dataset,
            batch_size=config.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            drop_last=shuffle,
            collate_fn=collate,
            num_workers=config.num_workers,
            persistent_workers=config.num_workers > 0,
        )

    train_loader = loader(train_path, shuffle=True)
    val_loader = loader(val_path, shuffle=False, n=config.val_size) if val_path else None
    # only now that the data loaded: a bad data path leaves no run directory behind
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(asdict(config), indent=2))
    module = PCCDLightning(asdict(config))
    module.label_counts = label_counts
    checkpoint = AtomicCheckpoint(out, checkpoint_minutes)
    # a new log version per (resumed) run: Lightning would otherwise delete the old metrics
    loggers: list = [L.pytorch.loggers.CSVLogger(out, name="logs")]
    try:
        import tensorboard  # noqa: F401

        loggers.append(L.pytorch.loggers.TensorBoardLogger(out, name="tb"))
    except ImportError:
        pass
    trainer = L.Trainer(
        default_root_dir=out,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        max_epochs=-1 if max_steps < 0 else None,
        max_steps=max_steps,
        gradient_clip_val=config.grad_clip or None,
        precision=_LIGHTNING_PRECISION[precision],
        callbacks=[checkpoint] + ([RunTimeLimit(max_minutes)] if max_minutes else []),
        logger=loggers,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        check_val_every_n_epoch=1,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        deterministic=False,
    )
    trainer.fit(
        module,
        train_loader,
        val_loader,
        ckpt_path=str(ckpt) if resume and ckpt.exists() else None,
    )
    return ckpt
