"""Training: crystals → augmented arrays → diffusion loss, wrapped in Lightning.

Lightning gives one command for CPU, one GPU or several GPUs (``devices``/``strategy``), CSV /
TensorBoard logs and exact resumption of optimiser and loop state. The science stays in plain
torch: :func:`pccd.diffusion.diffusion_loss` and :class:`pccd.model.PCCDUNet`; this module only
feeds them.

Augmentations keep the crystal the same crystal:

* atom order — the order of atoms over the 128 rows is arbitrary, so it is shuffled
  (``atom_order="by_element"`` shuffles within each element and keeps elements in slot order,
  ``"random"`` shuffles freely); ``"file"`` keeps the CIF's own order within each element
  (the authors' setting: no augmentation);
* a random periodic shift of all fractional coordinates (origin choice; off = the file's own
  origin, where many atoms sit on special positions such as 0 and ½);
* optionally a permutation of the occupied element slots together with their conditions.

Checkpoints are written atomically (temporary file + rename) every ``checkpoint_minutes`` and
when a run ends, so a killed run loses at most that many minutes and the next run resumes.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from pccd import data as data_mod
from pccd import representation as rep
from pccd.conditioning import METAL_THRESHOLD_EV, Conditions
from pccd.diffusion import LOSSES, PREDICTIONS, WEIGHTINGS, DDPMScheduler, diffusion_loss
from pccd.diffusion.sampling import DEFAULT_PRECISION, check_precision
from pccd.errors import InputError, MissingInputError
from pccd.model import PRESETS, PCCDUNet, UNetConfig, preset_config
from pccd.pair_loss import pair_distance_loss

_log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Every knob of a training run; saved in checkpoints and with exported weights.

    The paper's optimiser settings are the defaults: Adam β=(0.9, 0.99), lr 1e-4, batch 128,
    L1 loss on ε, cosine schedule with T=1000. ``init_from`` names a pretrained model (shipped
    name or directory) whose weights seed the network (:func:`pccd.model.warm_start`), so an
    architecture option can be tried as a fine-tune. ``loss_weighting="min_snr"`` (with
    ``snr_gamma``) reweights the training loss per timestep (see
    :func:`pccd.diffusion.diffusion_loss`); the validation loss stays the unweighted paper loss,
    so runs with and without it compare on one scale. ``snr_shift`` (default 1, the paper)
    divides the schedule's signal-to-noise ratio (:func:`pccd.diffusion.shift_snr`): training,
    validation and the exported model's samplers all use the shifted forward process, so
    val losses of runs with different shifts are not on one scale. ``prediction="v"`` trains
    the network to output v instead of ε (:data:`pccd.diffusion.PREDICTIONS`); its losses
    are on another scale too. ``pair_loss_weight`` > 0 adds that multiple of
    :func:`pccd.pair_loss.pair_distance_loss` (x̂_0's neighbour distances against the true ones)
    to the training loss; 0 is the paper's loss, and validation always uses the plain loss.

    The learning rate is constant by default (the paper). ``lr_warmup_steps`` ramps it up
    linearly from the first step (what a warm-started fine-tune with fresh Adam moments needs,
    so its first updates do not jolt the weights), and ``lr_decay_steps`` > 0 anneals it by a
    cosine to zero over that many steps from ``lr_decay_start``: the decay phase of a
    warmup-stable-decay schedule, which is how a long constant-rate run is turned into a
    finished model without fixing its length in advance (:func:`lr_factor`).

    ``band_gap_contrast_weight`` > 1 draws the training rows that carry the band gap's
    information more often (:func:`band_gap_contrast_rows`; sampling with replacement, an
    "epoch" stays one table's worth of draws). Why: among the labelled MP rows the element
    list alone explains 88% of the gap's variance, so the only rows from which the network can
    learn what the gap adds *given the elements* are those whose element list holds both a
    metal and a non-metal — 7.1% of the MP train split (``benchmarks/band_gap_contrast.py``).
    1 (the default, the paper) samples uniformly.

    ``cond_drop`` gives each condition's classifier-free-guidance dropout probability; a
    condition it does not name is never dropped. Configs saved before the ``stability``
    condition existed lack that key and keep meaning exactly what they meant: no extra random
    draw per batch, so a resumed old run continues its random stream unchanged (and their
    networks have no stability embedding to train anyway, see :func:`fit_conditions_to_weights`).
    """

    preset: str = "cpu"
    model_overrides: dict = field(default_factory=dict)
    lattice_scheme: str = "log"
    row_layout: str = "spread"
    batch_size: int = 128
    lr: float = 1e-4
    lr_warmup_steps: int = 0
    lr_decay_start: int = 0
    lr_decay_steps: int = 0
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    loss: str = "l1"
    loss_weighting: str = "none"
    snr_gamma: float = 5.0
    num_train_timesteps: int = 1000
    schedule: str = "cosine"
    snr_shift: float = 1.0
    prediction: str = "epsilon"
    pair_loss_weight: float = 0.0
    band_gap_contrast_weight: float = 1.0
    cond_drop: dict = field(
        default_factory=lambda: {
            "elements": 0.1,
            "band_gap": 0.2,
            "magnetic": 0.2,
            "formula": 0.5,
            "stability": 0.2,
        }
    )
    atom_order: str = "by_element"
    random_shift: bool = True
    slot_permutation: bool = False
    seed: int = 0
    num_workers: int = 0
    val_size: int = 1024
    init_from: str | None = None

    def __post_init__(self) -> None:
        # fail before a run directory or a data cache is made, not at the first step
        if self.loss not in LOSSES:
            raise InputError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.loss_weighting not in WEIGHTINGS:
            raise InputError(
                f"loss_weighting must be one of {WEIGHTINGS}, got {self.loss_weighting!r}"
            )
        if not self.snr_gamma > 0:
            raise InputError(f"snr_gamma must be > 0, got {self.snr_gamma}")
        if not self.snr_shift > 0:
            raise InputError(f"snr_shift must be > 0, got {self.snr_shift}")
        if self.prediction not in PREDICTIONS:
            raise InputError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if min(self.lr_warmup_steps, self.lr_decay_start, self.lr_decay_steps) < 0:
            raise InputError("lr_warmup_steps, lr_decay_start and lr_decay_steps must be ≥ 0")
        # unknown scheme / layout: refused here too
        spread = self.representation().row_layout is rep.RowLayout.SPREAD
        if self.pair_loss_weight < 0:
            raise InputError(f"pair_loss_weight must be ≥ 0, got {self.pair_loss_weight}")
        if not self.band_gap_contrast_weight > 0:
            raise InputError(
                f"band_gap_contrast_weight must be > 0, got {self.band_gap_contrast_weight}"
            )
        if self.pair_loss_weight and not spread:
            raise InputError("pair_loss_weight needs the spread row layout (atoms as row blocks)")
        if self.model_overrides.get("atom_attention") and not spread:
            raise InputError("atom_attention needs the spread row layout (atoms as row blocks)")
        preset_config(self.preset, self.model_overrides)  # the network it builds is valid

    def diffusion(self) -> dict[str, object]:
        """The forward process this run trains on (and its exported model samples with)."""
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "schedule": self.schedule,
            "snr_shift": self.snr_shift,
            "prediction": self.prediction,
        }

    def representation(self) -> rep.RepresentationConfig:
        """The representation this run encodes with (and its exported model decodes with)."""
        return rep.RepresentationConfig(
            lattice_scheme=rep.LatticeScheme(self.lattice_scheme),
            row_layout=rep.RowLayout(self.row_layout),
        )


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


ATOM_ORDERS = ("by_element", "random", "file")
#: our precision names (shared with sampling) → Lightning's
_LIGHTNING_PRECISION = {"float32": "32-true", "bfloat16": "bf16-mixed"}


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


# --------------------------------------------------------------------------------------------
# Lightning module
# --------------------------------------------------------------------------------------------


class PCCDLightning(L.LightningModule):
    """Wraps the denoiser for Lightning: loss, EMA weights, optimiser, wall-time bookkeeping."""

    def __init__(self, config: dict):
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.cfg = TrainConfig(**config)
        self.model = PCCDUNet.from_preset(self.cfg.preset, **self.cfg.model_overrides)
        if self.cfg.init_from:
            self._warm_start(self.cfg.init_from)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.scheduler = DDPMScheduler(**self.cfg.diffusion())
        self.rep_config = self.cfg.representation()
        self.train_seconds = 0.0  # cumulative over resumed runs
        self._t_last: float | None = None
        # training rows with a label per optional condition, set by train(); exported so a
        # model refuses conditions it never learned (see PCCDPipeline.trained_conditions)
        self.label_counts: dict[str, int] = {}

    def _warm_start(self, name_or_path: str) -> None:
        from pccd.model import load_weights, warm_start

        directory = Path(name_or_path)
        if not (directory / "model.pt").exists():
            directory = Path(__file__).parent / "weights" / name_or_path
        if not (directory / "model.pt").exists():
            raise MissingInputError(f"init_from: no model.pt in {name_or_path!r}")
        warm_start(self.model, load_weights(directory, map_location="cpu"))

    def training_step(self, batch: tuple[torch.Tensor, Conditions], batch_idx: int):
        x, cond = batch
        cond = cond.drop(self.cfg.cond_drop)
        loss = diffusion_loss(
            self.model,
            self.scheduler,
            x,
            cond,
            loss=self.cfg.loss,
            weighting=self.cfg.loss_weighting,
            snr_gamma=self.cfg.snr_gamma,
            x0_penalty=self._pair_penalty if self.cfg.pair_loss_weight else None,
        )
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        self.log("samples_seen", float(self.global_step * x.shape[0] * self.trainer.world_size))
        return loss

    def _pair_penalty(self, x0_hat: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        distances = pair_distance_loss(x0_hat, x0, self.rep_config)
        return self.cfg.pair_loss_weight * distances

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # EMA with a warm-up so early weights do not linger (decay → ema_decay as steps grow)
        step = self.global_step
        decay = min(self.cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                e.lerp_(p, 1.0 - decay)
            for e, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
                e.copy_(b)
        now = time.monotonic()
        if self._t_last is not None:
            self.train_seconds += now - self._t_last
        self._t_last = now

    def on_train_epoch_start(self) -> None:
        self._t_last = time.monotonic()

    def validation_step(self, batch: tuple[torch.Tensor, Conditions], batch_idx: int):
        x, cond = batch
        # fixed timesteps and noise per batch: validation losses are comparable across a run
        gen = torch.Generator(device=x.device).manual_seed(10_000 + batch_idx)
        loss = diffusion_loss(self.ema, self.scheduler, x, cond, generator=gen, loss=self.cfg.loss)
        self.log("val_loss", loss, prog_bar=True, on_epoch=True, sync_dist=True)
        return loss

    def configure_optimizers(self):
        optimiser = torch.optim.Adam(
            self.model.parameters(),
            lr=self.cfg.lr,
            betas=tuple(self.cfg.betas),
            weight_decay=self.cfg.weight_decay,
        )
        if not (self.cfg.lr_warmup_steps or self.cfg.lr_decay_steps):
            return optimiser  # constant rate: no scheduler state, as in runs from before it
        factor = functools.partial(
            lr_factor,
            warmup=self.cfg.lr_warmup_steps,
            decay_start=self.cfg.lr_decay_start,
            decay_steps=self.cfg.lr_decay_steps,
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, factor)
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["train_seconds"] = self.train_seconds
        checkpoint["label_counts"] = self.label_counts

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.train_seconds = float(checkpoint.get("train_seconds", 0.0))
        self.label_counts = checkpoint.get("label_counts", self.label_counts)


def lr_factor(step: int, *, warmup: int = 0, decay_start: int = 0, decay_steps: int = 0) -> float:
    """The multiple of the base learning rate used at optimiser ``step`` (0-based).

    Linear warm-up over the first ``warmup`` steps (step 0 already takes a 1/warmup step, so no
    update is wasted), constant after it, and with ``decay_steps`` a half-cosine from 1 at
    ``decay_start`` to 0 at ``decay_start + decay_steps``, then 0: training past the end of
    the decay changes nothing, rather than silently restarting at the full rate.
    """
    factor = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if decay_steps and step >= decay_start:
        progress = min(1.0, (step - decay_start) / decay_steps)
        factor *= 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


class RunTimeLimit(L.Callback):
    """Stop cleanly after ``minutes`` of *this* run.

    Lightning's ``max_time`` restores its elapsed time from a checkpoint, so a resumed run
    whose earlier runs already used the budget would stop at once; ``--max-minutes`` means
    minutes of the current run.
    """

    def __init__(self, minutes: float):
        self.seconds = minutes * 60.0
        self._start = time.monotonic()

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if time.monotonic() - self._start >= self.seconds:
            trainer.should_stop = True


class AtomicCheckpoint(L.Callback):
    """Save ``last.ckpt`` every ``every_minutes`` and at the end, atomically.

    Lightning writes checkpoint files in place; a run killed mid-write would leave a corrupt
    file. Writing to a temporary name and renaming keeps the previous checkpoint intact.
    """

    def __init__(self, dirpath: str | Path, every_minutes: float = 10.0):
        self.dirpath = Path(dirpath)
        self.every = every_minutes * 60.0
        self._last = time.monotonic()

    @property
    def path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def save(self, trainer: L.Trainer) -> None:
        tmp = self.dirpath / "last.ckpt.tmp"
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        trainer.strategy.barrier()
        self._last = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if time.monotonic() - self._last >= self.every:
            self.save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.save(trainer)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


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


PACK_MANIFEST = "manifest.pt"
PACK_SHARD = "tensors-{:03d}.pt"
LEGACY_PACK_FILES = ("weights.pt", "state.pt")
MAX_FILE_MB = 45.0
_PACK_FORMAT = 2
_MOMENTS = ("exp_avg", "exp_avg_sq")
# files a pack writes or once wrote (the two-file layout, leftovers of an interrupted save)
_PACK_FILE = re.compile(r"tensors-\d{3,}\.pt(\.tmp)?|manifest\.pt\.tmp|(weights|state)\.(pt|tmp)")
# size budget of torch.save's zip archive beyond the tensor bytes: fixed records, and per tensor
# its zip headers, 64-byte alignment and pickled key (measured ~290 bytes with 60-byte keys)
_SHARD_FIXED_BYTES = 4096
_TENSOR_RECORD_BYTES = 512


def pack_checkpoint(
    ckpt_path: str | Path, out_dir: str | Path, max_file_mb: float = MAX_FILE_MB
) -> list[Path]:
    """Write a training checkpoint as files of at most ``max_file_mb`` MB each, for git.

    Why: a Lightning checkpoint holds the weights, the EMA weights and two fp32 Adam moments
    (~75 MB for the ``cpu`` preset, ~230 MB for ``wide``), above the repository's per-file
    limit. The tensors are spread in order over ``tensors-001.pt``, ``tensors-002.pt``, … (each
    at most the cap; a single tensor above it is an error naming it): the network and EMA
    weights in fp32 (exact), the Adam moments in bf16 — enough to continue training, at a
    relative rounding of ~0.4% on the moments. ``manifest.pt`` holds everything else (loop
    state, step counter, wall time, config) and the list of shards; each shard maps the
    tensors' places in the checkpoint to them, in the checkpoint's order.

    Every file is written atomically (temporary file + rename), the manifest last; shards of an
    earlier pack in ``out_dir`` that this one does not use, and the older two-file layout
    (``weights.pt`` + ``state.pt``), are then removed. Manifest and shards carry the same pack
    id (a digest of the checkpoint file), so a directory left half re-packed by a killed run is
    refused by :func:`unpack_checkpoint` rather than resumed from a mix. Returns the paths
    written, the manifest first.
    """
    ckpt_path = Path(ckpt_path)
    cap = int(max_file_mb * 1e6)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    tensors = _take_tensors(ckpt)
    groups = _shard_groups(tensors, cap, max_file_mb)
    pack_id = _file_digest(ckpt_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for number, addresses in enumerate(groups, start=1):
        path = out / PACK_SHARD.format(number)
        part = {"pack_id": pack_id, "tensors": {a: tensors[a] for a in addresses}}
        _save_capped(part, path, cap, max_file_mb)
        shards.append({"file": path.name, "tensors": len(addresses)})
    manifest = {"format": _PACK_FORMAT, "pack_id": pack_id, "shards": shards, "checkpoint": ckpt}
    _save_capped(manifest, out / PACK_MANIFEST, cap, max_file_mb)
    written = [out / PACK_MANIFEST] + [out / s["file"] for s in shards]
    keep = {p.name for p in written}
    for path in out.iterdir():
        if path.name not in keep and _PACK_FILE.fullmatch(path.name) and path.is_file():
            path.unlink()
    return written


def unpack_checkpoint(packed_dir: str | Path, run_dir: str | Path) -> Path:
    """Rebuild ``run_dir/last.ckpt`` from :func:`pack_checkpoint` files (moments back to fp32).

    Reads the sharded layout (``manifest.pt`` + ``tensors-NNN.pt``) and the older two-file
    one (``weights.pt`` with the state dict, ``state.pt`` with the rest).
    """
    packed = Path(packed_dir)
    if (packed / PACK_MANIFEST).exists():
        ckpt = _read_shards(packed)
    elif all((packed / name).exists() for name in LEGACY_PACK_FILES):
        weights, state = (packed / name for name in LEGACY_PACK_FILES)
        ckpt = torch.load(state, map_location="cpu", weights_only=False)
        ckpt.update(torch.load(weights, map_location="cpu", weights_only=False))
    else:
        raise MissingInputError(
            f"{packed} has no {PACK_MANIFEST} (nor the older {' + '.join(LEGACY_PACK_FILES)}): "
            "not a packed checkpoint"
        )
    for opt in ckpt.get("optimizer_states", []):
        for state in opt["state"].values():
            for key in _MOMENTS:
                if key in state:
                    state[key] = state[key].to(torch.float32)
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    tmp = run / "last.ckpt.tmp"
    torch.save(ckpt, tmp)
    os.replace(tmp, run / "last.ckpt")
    return run / "last.ckpt"


def _take_tensors(ckpt: dict) -> dict[tuple, torch.Tensor]:
    """Remove the bulky tensors from ``ckpt``, keyed by where they belong.

    ``("state_dict", name)`` for every state-dict entry, ``("optimizer_states", i, param,
    key)`` for every optimiser-state tensor (Adam moments cast to bf16; the step counters too,
    as each tensor costs the manifest a few hundred bytes). Each comes back with its own
    compact storage: ``torch.save`` writes a view's whole storage.
    """
    tensors: dict[tuple, torch.Tensor] = {
        ("state_dict", name): value for name, value in ckpt.pop("state_dict").items()
    }
    for i, opt in enumerate(ckpt.get("optimizer_states", [])):
        for param, state in opt["state"].items():
            for key, value in list(state.items()):
                if isinstance(value, torch.Tensor):
                    del state[key]
                    cast = value.to(torch.bfloat16) if key in _MOMENTS else value
                    tensors[("optimizer_states", i, param, key)] = cast
    return {
        address: t if t.untyped_storage().nbytes() == t.nbytes else t.clone()
        for address, t in tensors.items()
    }


def _shard_groups(
    tensors: dict[tuple, torch.Tensor], cap: int, max_file_mb: float
) -> list[list[tuple]]:
    """Tensor addresses in order, cut into runs whose saved file stays within ``cap`` bytes."""
    groups: list[list[tuple]] = []
    current: list[tuple] = []
    size = _SHARD_FIXED_BYTES
    for address, tensor in tensors.items():
        need = tensor.nbytes + _TENSOR_RECORD_BYTES + len(repr(address))
        if _SHARD_FIXED_BYTES + need > cap:
            raise InputError(
                f"{'/'.join(map(str, address))}: {tensor.nbytes / 1e6:.3g} MB, with the file's "
                f"own overhead, does not fit in a {max_file_mb:g} MB file"
            )
        if current and size + need > cap:
            groups.append(current)
            current, size = [], _SHARD_FIXED_BYTES
        current.append(address)
        size += need
    if current:
        groups.append(current)
    return groups


def _save_capped(obj: object, path: Path, cap: int, max_file_mb: float) -> None:
    """``torch.save`` atomically, refusing a file above ``cap`` bytes (leaves ``path`` as was)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    size = tmp.stat().st_size
    if size > cap:
        tmp.unlink()
        raise InputError(f"{path.name} would be {size / 1e6:.2f} MB, above {max_file_mb:g} MB")
    os.replace(tmp, path)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _read_shards(packed: Path) -> dict:
    """The checkpoint of a sharded pack, its tensors back in place and in their saved order."""
    manifest = torch.load(packed / PACK_MANIFEST, map_location="cpu", weights_only=False)
    if not isinstance(manifest, dict) or manifest.get("format") != _PACK_FORMAT:
        raise InputError(f"{packed / PACK_MANIFEST}: not a pccd pack manifest")
    ckpt = manifest["checkpoint"]
    ckpt["state_dict"] = {}
    for shard in manifest["shards"]:
        path = packed / shard["file"]
        if not path.exists():
            raise MissingInputError(f"{path}: shard of the packed checkpoint is missing")
        part = torch.load(path, map_location="cpu", weights_only=True)
        if part.get("pack_id") != manifest["pack_id"]:
            raise InputError(
                f"{path} belongs to another pack than {PACK_MANIFEST} (an interrupted re-pack?);"
                " pack the checkpoint again"
            )
        if len(part["tensors"]) != shard["tensors"]:
            raise InputError(
                f"{path}: {len(part['tensors'])} tensors, the manifest says {shard['tensors']}"
            )
        for address, tensor in part["tensors"].items():
            if address[0] == "state_dict":
                ckpt["state_dict"][address[1]] = tensor
            else:
                _, i, param, key = address
                ckpt["optimizer_states"][i]["state"][param][key] = tensor
    return ckpt


def trained_conditions(conditions: tuple[str, ...], label_counts: dict[str, int]) -> list[str]:
    """The model's conditions that its training rows carried labels for.

    Elements and formula come from every crystal itself; band gap, magnetic ordering and
    stability only count when some training row had a value. Without recorded counts (old
    checkpoints) every condition is assumed trained.
    """
    if not label_counts:
        return list(conditions)
    return [c for c in conditions if c in ("elements", "formula") or label_counts.get(c, 0) > 0]


def fit_conditions_to_weights(config: TrainConfig, state_keys: Iterable[str]) -> TrainConfig:
    """``config`` with the network's conditions pinned to those its saved weights embed.

    Why: a checkpoint records its network as a preset plus overrides, and a preset's default
    conditions grow when a condition is added (``stability``). A checkpoint written before
    that has no stability embedding, so rebuilding its network from the preset today would not
    match its weights; this pins ``model_overrides["conditions"]`` to the conditions without
    ``stability``. Checkpoints whose weights have a stability embedding, or whose conditions
    leave stability out, come back unchanged.
    """
    if config.preset not in PRESETS:
        return config  # PCCDUNet.from_preset names the bad preset
    conditions = replace(PRESETS[config.preset], **config.model_overrides).conditions
    has_embedding = any(k.endswith("cond_encoder.stability_embed.weight") for k in state_keys)
    if "stability" not in conditions or has_embedding:
        return config
    kept = [c for c in conditions if c != "stability"]
    return replace(config, model_overrides={**config.model_overrides, "conditions": kept})


def export_pretrained(ckpt_path: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Write the EMA weights of a checkpoint as a pretrained model directory.

    The directory holds ``config.json``/``model.pt`` (the network) and ``pccd.json``
    (representation and diffusion settings plus the training summary used by the model card).
    ``dtype="float16"`` stores the weights at half the size (see
    :meth:`pccd.model.PCCDUNet.save_pretrained`); loading computes in float32 either way.
    """
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    cfg = TrainConfig(**ckpt["hyper_parameters"]["config"])
    cfg = fit_conditions_to_weights(cfg, ckpt["state_dict"])
    model = PCCDUNet.from_preset(cfg.preset, **cfg.model_overrides)
    prefix = "ema."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    model.load_state_dict(state)
    out = Path(out_dir)
    model.save_pretrained(out, dtype=dtype)
    steps = int(ckpt["global_step"])
    labels = ckpt.get("label_counts") or {}
    meta = {
        "name": out.name,
        "family": "points",
        "representation": cfg.representation().to_dict(),
        "diffusion": cfg.diffusion(),
        "trained_conditions": trained_conditions(model.config.conditions, labels),
        "training": {
            "config": asdict(cfg),
            "steps": steps,
            "samples_seen": steps * cfg.batch_size,
            "train_hours": round(float(ckpt.get("train_seconds", math.nan)) / 3600.0, 3),
            "label_counts": labels,
        },
    }
    (out / "pccd.json").write_text(json.dumps(meta, indent=2))
    return out


__all__ = [
    "AtomicCheckpoint",
    "CrystalDataset",
    "PCCDLightning",
    "TrainConfig",
    "UNetConfig",
    "band_gap_contrast_rows",
    "collate",
    "contrast_sampler",
    "export_pretrained",
    "fit_conditions_to_weights",
    "pack_checkpoint",
    "train",
    "trained_conditions",
    "unpack_checkpoint",
]
