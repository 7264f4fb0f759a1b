"""Training of the atom family that spans working days: resumable, EMA, logged curves.

:func:`train` runs until a time budget (minutes of training, probes excluded) is spent or it is
stopped, and can be started again on the same directory any number of times:

* ``live.pt`` (model, EMA, optimiser, step, epoch position, RNG states) is rewritten atomically
  every ``checkpoint_minutes``, so a killed run loses at most that much;
* ``curve.csv`` gets a row of smoothed losses every ``log_every`` steps;
* ``quality.csv`` gets a row from ``probe(ema_model)`` every ``probe_minutes`` of training
  (e.g. plausible share and CSP match rate on 200 val formulas), so what more training buys is
  measured while it runs.

Batches are drawn by :func:`~pccd.families.atoms.batch.size_buckets` from a generator seeded by
(seed, epoch), so a resumed run continues the same sequence of batches.

:func:`anneal` forks a run into a new directory whose learning rate decays (cosine) over a
few more minutes: the long run keeps its constant rate and can go on for days, while each
milestone ships from an annealed fork, as published models end their training.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from pccd.families.atoms.batch import AtomArrays, size_buckets
from pccd.families.atoms.counts import AtomCountPrior
from pccd.families.atoms.diffusion import AtomDiffusion, AtomModelConfig

log = logging.getLogger(__name__)

LIVE = "live.pt"
ATOM_COUNTS = "atom_counts.json"
"""The count prior of de novo sampling, read off the training split when training starts."""
CURVE_FIELDS = ("step", "epoch", "samples", "train_minutes", "loss", "coord", "lattice", "type",
                "lr", "samples_per_s")  # fmt: skip


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule: Adam, linear warm-up, then constant (or a late decay)."""

    lr: float = 1e-3
    warmup_steps: int = 500
    batch_size: int = 128
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    decay_after_minutes: float | None = None
    """If set, the lr decays as cosine from this many training minutes to ``decay_minutes``
    later, down to ``min_lr`` (a run's last phase); None = constant after warm-up."""
    decay_minutes: float = 120.0
    min_lr: float = 1e-4


@dataclass(frozen=True)
class TrainRun:
    """One training directory's settings (``train.json`` there)."""

    model: AtomModelConfig = field(default_factory=AtomModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    threads: int = 1
    checkpoint_minutes: float = 10.0
    probe_minutes: float = 30.0
    log_every: int = 100
    forked_from: dict | None = None
    """For an annealed fork: the run directory and step it continued from."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainRun:
        rest = {k: v for k, v in d.items() if k not in ("model", "optim")}
        return cls(AtomModelConfig.from_dict(d["model"]), OptimConfig(**d["optim"]), **rest)


def learning_rate(optim: OptimConfig, step: int, minutes: float) -> float:
    """The lr at ``step`` after ``minutes`` of training (see :class:`OptimConfig`)."""
    lr = optim.lr * min(1.0, (step + 1) / max(optim.warmup_steps, 1))
    if optim.decay_after_minutes is not None and minutes > optim.decay_after_minutes:
        frac = min(1.0, (minutes - optim.decay_after_minutes) / optim.decay_minutes)
        lr = optim.min_lr + 0.5 * (optim.lr - optim.min_lr) * (1 + np.cos(np.pi * frac))
    return float(lr)


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _append_csv(path: Path, row: dict, fields) -> None:
    """Append ``row``; a file whose header names other columns is refused, not mixed into
    (a probe with other samplers starts a curve file of its own)."""
    new = not path.exists()
    if not new:
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if header != list(fields):
            raise ValueError(
                f"{path} has columns {header}, this row has {list(fields)}: move the old file "
                "aside to start a new curve"
            )
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        if new:
            w.writeheader()
        w.writerow(row)


class _State:
    """Everything a resume needs, in one place."""

    def __init__(self, run: TrainRun, device: torch.device) -> None:
        torch.manual_seed(run.seed)
        self.model = AtomDiffusion(run.model).to(device)
        self.ema = copy.deepcopy(self.model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=run.optim.lr)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.samples = 0
        self.train_seconds = 0.0
        self.next_probe = run.probe_minutes * 60
        self.generator = torch.Generator().manual_seed(run.seed + 1)

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(), "ema": self.ema.state_dict(),
            "opt": self.opt.state_dict(), "step": self.step, "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch, "samples": self.samples,
            "train_seconds": self.train_seconds, "next_probe": self.next_probe,
            "generator": self.generator.get_state(),
        }  # fmt: skip

    def load_state_dict(self, d: dict) -> None:
        self.model.load_state_dict(d["model"])
        self.ema.load_state_dict(d["ema"])
        self.opt.load_state_dict(d["opt"])
        for k in ("step", "epoch", "batch_in_epoch", "samples", "train_seconds", "next_probe"):
            setattr(self, k, d[k])
        self.generator.set_state(d["generator"])


def train(
    out: str | Path,
    arrays: AtomArrays,
    run: TrainRun | None = None,
    *,
    prior: AtomCountPrior | None = None,
    minutes: float,
    probe: Callable[[AtomDiffusion], dict] | None = None,
    device: torch.device | str = "cpu",
) -> dict:
    """Train (or resume) in ``out`` for ``minutes`` more minutes of training time.

    ``run`` is required for a new directory and must match ``train.json`` of an existing one
    (a resumed run cannot silently change its settings). ``prior`` (default: read off
    ``arrays``) is the atom-count prior de novo sampling will use, written as
    ``atom_counts.json``. Returns the last logged row.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = out / "train.json"
    if settings.exists():
        saved = TrainRun.from_dict(json.loads(settings.read_text()))
        if run is not None and run != saved:
            raise ValueError(f"{out} was started with other settings; see {settings}")
        run = saved
    elif run is None:
        raise ValueError(f"{out} holds no run; give its settings")
    else:
        settings.write_text(json.dumps(run.to_dict(), indent=2))
    counts = out / ATOM_COUNTS
    if not counts.exists():
        prior = prior or AtomCountPrior.from_arrays(arrays.num_atoms, arrays.slots)
        counts.write_text(json.dumps(prior.to_list()))
    torch.set_num_threads(run.threads)
    device = torch.device(device)
    state = _State(run, device)
    if (out / LIVE).exists():
        state.load_state_dict(torch.load(out / LIVE, map_location=device, weights_only=False))
        log.info("resumed %s at step %d (%.1f min)", out, state.step, state.train_seconds / 60)
    budget_end = state.train_seconds + minutes * 60
    last_save = time.monotonic()
    sums: dict[str, float] = {}
    window_start, window_samples = time.monotonic(), 0
    row: dict = {}
    while state.train_seconds < budget_end:
        batches = _epoch(arrays, run, state.epoch)
        while state.batch_in_epoch < len(batches) and state.train_seconds < budget_end:
            tick = time.monotonic()
            minutes_now = state.train_seconds / 60
            lr = learning_rate(run.optim, state.step, minutes_now)
            for g in state.opt.param_groups:
                g["lr"] = lr
            batch = arrays.batch(batches[state.batch_in_epoch]).to(device)
            state.model.train()
            loss, parts = state.model.loss(batch, state.generator)
            state.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(state.model.parameters(), run.optim.grad_clip)
            state.opt.step()
            _ema_update(state.ema, state.model, run.optim.ema_decay)
            state.step += 1
            state.batch_in_epoch += 1
            state.samples += len(batch.types)
            window_samples += len(batch.types)
            for k, v in {"loss": loss.item(), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v
            state.train_seconds += time.monotonic() - tick
            if state.step % run.log_every == 0:
                elapsed = time.monotonic() - window_start
                row = {
                    "step": state.step, "epoch": state.epoch, "samples": state.samples,
                    "train_minutes": round(state.train_seconds / 60, 2),
                    **{k: round(v / run.log_every, 5) for k, v in sums.items()},
                    "lr": lr, "samples_per_s": round(window_samples / elapsed, 1),
                }  # fmt: skip
                _append_csv(out / "curve.csv", row, CURVE_FIELDS)
                log.info("step %d %s", state.step, row)
                sums, window_start, window_samples = {}, time.monotonic(), 0
            if time.monotonic() - last_save > run.checkpoint_minutes * 60:
                _atomic_save(state.state_dict(), out / LIVE)
                last_save = time.monotonic()
            if probe is not None and state.train_seconds >= state.next_probe:
                _run_probe(out, state, probe)
                state.next_probe += run.probe_minutes * 60
                window_start, window_samples = time.monotonic(), 0
        if state.batch_in_epoch >= len(batches):
            state.epoch += 1
            state.batch_in_epoch = 0
    _atomic_save(state.state_dict(), out / LIVE)
    return row


def anneal(
    source: str | Path,
    out: str | Path,
    arrays: AtomArrays,
    *,
    minutes: float,
    min_lr: float = 1e-4,
    probe: Callable[[AtomDiffusion], dict] | None = None,
) -> dict:
    """Fork the run in ``source`` into ``out`` and train it ``minutes`` more while its lr
    decays to ``min_lr`` (cosine); ``source`` is left as it was. Run again on ``out`` to
    resume the fork (settings from its ``train.json``)."""
    source, out = Path(source), Path(out)
    if not (out / "train.json").exists():
        run = TrainRun.from_dict(json.loads((source / "train.json").read_text()))
        state = torch.load(source / LIVE, map_location="cpu", weights_only=False)
        start = state["train_seconds"] / 60
        optim = replace(run.optim, decay_after_minutes=start, decay_minutes=minutes, min_lr=min_lr)
        forked = {"run": str(source), "step": state["step"], "train_minutes": round(start, 2)}
        run = replace(run, optim=optim, forked_from=forked)
        out.mkdir(parents=True, exist_ok=True)
        for name in (LIVE, ATOM_COUNTS, "curve.csv", "quality.csv"):
            if (source / name).exists():
                shutil.copy2(source / name, out / name)
        (out / "train.json").write_text(json.dumps(run.to_dict(), indent=2))
        budget = minutes
    else:
        run = TrainRun.from_dict(json.loads((out / "train.json").read_text()))
        state = torch.load(out / LIVE, map_location="cpu", weights_only=False)
        end = run.optim.decay_after_minutes + run.optim.decay_minutes  # type: ignore[operator]
        budget = max(0.0, end - state["train_seconds"] / 60)
    return train(out, arrays, minutes=budget, probe=probe)


def _epoch(arrays: AtomArrays, run: TrainRun, epoch: int) -> list[np.ndarray]:
    rng = np.random.default_rng([run.seed, epoch])
    return size_buckets(arrays.num_atoms, run.optim.batch_size, rng)


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1 - decay)


def _run_probe(out: Path, state: _State, probe) -> None:
    tick = time.monotonic()
    figures = probe(state.ema)
    row = {"step": state.step, "samples": state.samples,
           "train_minutes": round(state.train_seconds / 60, 2), **figures,
           "probe_seconds": round(time.monotonic() - tick, 1)}  # fmt: skip
    _append_csv(out / "quality.csv", row, row.keys())
    log.info("probe at step %d: %s", state.step, row)
