"""The atom family's diffusion model: denoiser + the three processes + the training loss.

:class:`AtomDiffusion` is a plain ``nn.Module`` (what a checkpoint holds); training
(:mod:`pccd.families.atoms.training`) and sampling (:mod:`pccd.families.atoms.sampling`) use
it and nothing else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pccd.families.atoms.batch import AtomBatch
from pccd.families.atoms.denoiser import MASK_TOKEN, AtomDenoiser, AtomDenoiserConfig
from pccd.families.atoms.processes import LatticeDDPM, TorusScore, TypeMasking


@dataclass(frozen=True)
class DiffusionConfig:
    """The noise processes and how a training batch mixes the two tasks."""

    timesteps: int = 1000
    sigma_min: float = 0.005
    sigma_max: float = 0.5
    csp_fraction: float = 0.5
    """Share of training cells whose types are never masked (crystal-structure prediction);
    the rest have types masked with probability t/T (de novo)."""
    condition_dropout: float = 0.1
    """Each of band gap and stability is dropped with this probability (classifier-free
    guidance learns the unconditional branch from these)."""
    weight_coord: float = 1.0
    weight_lattice: float = 1.0
    weight_type: float = 1.0


@dataclass(frozen=True)
class AtomModelConfig:
    """Everything needed to rebuild an :class:`AtomDiffusion` (saved as ``config.json``)."""

    denoiser: AtomDenoiserConfig = field(default_factory=AtomDenoiserConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AtomModelConfig:
        return cls(AtomDenoiserConfig(**d["denoiser"]), DiffusionConfig(**d["diffusion"]))


class AtomDiffusion(nn.Module):
    """Denoiser and processes; :meth:`loss` is one training evaluation."""

    def __init__(self, config: AtomModelConfig = AtomModelConfig()) -> None:
        super().__init__()
        self.config = config
        d = config.diffusion
        self.net = AtomDenoiser(config.denoiser)
        self.torus = TorusScore(d.timesteps, d.sigma_min, d.sigma_max)
        self.lattice = LatticeDDPM(d.timesteps)
        self.types = TypeMasking(d.timesteps)

    @property
    def timesteps(self) -> int:
        return self.config.diffusion.timesteps

    def loss(
        self, batch: AtomBatch, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted sum of the coordinate, lattice and type losses, and each part's value."""
        d = self.config.diffusion
        b, n = batch.types.shape
        dev = batch.types.device

        def rand(*shape):
            return torch.rand(shape, generator=generator, device="cpu").to(dev)

        t = (rand(b) * self.timesteps).long().clamp(max=self.timesteps - 1) + 1
        x_t, score_target = self.torus.noise(batch.frac, t, generator)
        l_t, eps = self.lattice.noise(batch.lattice, t, generator)
        de_novo = rand(b) >= d.csp_fraction
        masked = (rand(b, n) < (t.float() / self.timesteps)[:, None]) & de_novo[:, None]
        masked &= batch.mask
        types_in = torch.where(masked, torch.full_like(batch.types, MASK_TOKEN), batch.types)
        gap = torch.where(rand(b) < d.condition_dropout, float("nan"), batch.band_gap)
        stab = torch.where(rand(b) < d.condition_dropout, -1, batch.stability)
        score, eps_hat, logits = self.net(types_in, x_t, l_t, batch.mask, t, batch.slots, gap, stab)
        m = batch.mask.float()[..., None]
        loss_coord = ((score - score_target) ** 2 * m).sum() / (3 * m.sum())
        loss_lattice = F.mse_loss(eps_hat, eps)
        if masked.any():
            target_slot = (batch.types[..., None] == batch.slots[:, None, :]).float().argmax(-1)
            loss_type = F.cross_entropy(logits[masked], target_slot[masked])
        else:
            loss_type = torch.zeros((), device=dev)
        total = (
            d.weight_coord * loss_coord
            + d.weight_lattice * loss_lattice
            + d.weight_type * loss_type
        )
        parts = {
            "coord": loss_coord.item(),
            "lattice": loss_lattice.item(),
            "type": loss_type.item(),
        }
        return total, parts
