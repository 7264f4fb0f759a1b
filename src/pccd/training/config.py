"""The training recipe: one flat :class:`TrainConfig`, checked when it is made.

Why flat: the config is saved as a flat dict in every checkpoint (``hyper_parameters``), in
``train_config.json`` and in an exported model's ``pccd.json``, and ``pccd train --option
KEY=VALUE`` names its fields. Keeping the fields flat keeps every saved run loading and
resuming as it is; the groups (network, representation, diffusion, loss, optimiser, data and
augmentation, run) are read through :meth:`TrainConfig.diffusion` and
:meth:`TrainConfig.representation`, and the network through :func:`pccd.model.preset_config`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from pccd import representation as rep
from pccd.diffusion import LOSSES, PREDICTIONS, WEIGHTINGS
from pccd.errors import InputError
from pccd.model import PRESETS, preset_config


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
    finished model without fixing its length in advance (:func:`pccd.training.lr_factor`).

    ``band_gap_contrast_weight`` > 1 draws the training rows that carry the band gap's
    information more often (:func:`pccd.training.band_gap_contrast_rows`; sampling with
    replacement, an "epoch" stays one table's worth of draws). Why: among the labelled MP rows
    the element list alone explains 88% of the gap's variance, so the only rows from which the
    network can learn what the gap adds *given the elements* are those whose element list holds
    both a metal and a non-metal — 7.1% of the MP train split
    (``benchmarks/band_gap_contrast.py``). 1 (the default, the paper) samples uniformly.

    ``cond_drop`` gives each condition's classifier-free-guidance dropout probability; a
    condition it does not name is never dropped. Configs saved before the ``stability``
    condition existed lack that key and keep meaning exactly what they meant: no extra random
    draw per batch, so a resumed old run continues its random stream unchanged (and their
    networks have no stability embedding to train anyway, see :func:`fit_conditions_to_weights`).

    The field order is the order of the saved JSON; new fields go at the end or beside their
    kin, with a default that means what runs saved without them did.
    """

    # network and representation
    preset: str = "cpu"
    model_overrides: dict = field(default_factory=dict)
    lattice_scheme: str = "log"
    row_layout: str = "spread"
    # optimiser
    batch_size: int = 128
    lr: float = 1e-4
    lr_warmup_steps: int = 0
    lr_decay_start: int = 0
    lr_decay_steps: int = 0
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    # loss and diffusion
    loss: str = "l1"
    loss_weighting: str = "none"
    snr_gamma: float = 5.0
    num_train_timesteps: int = 1000
    schedule: str = "cosine"
    snr_shift: float = 1.0
    prediction: str = "epsilon"
    pair_loss_weight: float = 0.0
    # data, conditioning and augmentation
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
    # run
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
