"""The Lightning side of training: the module (loss, EMA, optimiser, wall time) and callbacks.

Lightning gives one command for CPU, one GPU or several GPUs, CSV / TensorBoard logs and exact
resumption of optimiser and loop state. The science stays in plain torch
(:func:`pccd.diffusion.diffusion_loss`, :class:`pccd.model.PCCDUNet`); this module only feeds
them and keeps the bookkeeping a resumed run needs (EMA weights, cumulative train seconds,
the label counts the exported model card reports).

Checkpoints are written atomically (temporary file + rename) by :class:`AtomicCheckpoint`, so a
killed run loses at most ``checkpoint_minutes`` and the next run resumes.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import time
from pathlib import Path

import lightning as L
import torch

from pccd.conditioning import Conditions
from pccd.diffusion import DDPMScheduler, diffusion_loss
from pccd.errors import MissingInputError
from pccd.model import PCCDUNet, load_weights, warm_start
from pccd.pair_loss import pair_distance_loss
from pccd.training.config import TrainConfig

#: where shipped models live, for ``init_from`` given as a name
_WEIGHTS_DIR = Path(__file__).parents[1] / "weights"


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
        directory = Path(name_or_path)
        if not (directory / "model.pt").exists():
            directory = _WEIGHTS_DIR / name_or_path
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
