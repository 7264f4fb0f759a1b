"""DDIM sampling (Song et al. 2021): few-step, optionally deterministic reverse chains."""

from __future__ import annotations

import math

import torch

from pccd.diffusion.schedules import NoiseScheduler, randn_like


class DDIMScheduler(NoiseScheduler):
    """Non-Markovian sampler sharing the DDPM forward process (so any ε-model trained with
    :func:`~pccd.diffusion.ddpm.diffusion_loss` can use it, typically with 50–100 steps).

    x_{t'} = √ᾱ_{t'} x̂_0 + √(1 − ᾱ_{t'} − σ²) ε̂ + σ z,
    σ = η · √((1 − ᾱ_{t'}) / (1 − ᾱ_t)) · √(1 − ᾱ_t / ᾱ_{t'}).

    Args:
        eta: η = 0 (default) is deterministic — the same x_T always gives the same sample, and
            with a perfect ε̂ the chain returns exactly the x_0 that x_t was made from;
            η = 1 matches the DDPM posterior variance.
        (other arguments: see :class:`~pccd.diffusion.schedules.NoiseScheduler`; the default
        ``timestep_spacing="trailing"`` always starts the chain at t = T−1.)

    When ``clip_sample`` changes x̂_0, ε̂ is recomputed from the clipped x̂_0 so the two terms
    of the update stay consistent with x_t.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        schedule: str = "cosine",
        clip_sample: bool = True,
        timestep_spacing: str = "trailing",
        eta: float = 0.0,
        snr_shift: float = 1.0,
        prediction: str = "epsilon",
    ) -> None:
        super().__init__(
            num_train_timesteps, schedule, clip_sample, timestep_spacing, snr_shift, prediction
        )
        if eta < 0:
            raise ValueError(f"eta must be ≥ 0, got {eta}")
        self.eta = float(eta)

    @property
    def config(self) -> dict:
        return {**super().config, "eta": self.eta}

    def step(
        self,
        eps: torch.Tensor,
        t: int,
        x_t: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t = int(t)
        t_prev = self.previous_timestep(t)
        abar_t, abar_prev = self._abar(t), self._abar(t_prev)
        x0 = self.predict_x0(eps, t, x_t)
        if self.clip_sample:
            eps = self.eps_from_x0(x0, t, x_t)
        sigma = (
            self.eta
            * math.sqrt((1.0 - abar_prev) / (1.0 - abar_t))
            * math.sqrt(1.0 - abar_t / abar_prev)
        )
        direction = math.sqrt(max(1.0 - abar_prev - sigma**2, 0.0)) * eps
        x_prev = math.sqrt(abar_prev) * x0 + direction
        if sigma > 0 and t_prev >= 0:
            x_prev = x_prev + sigma * randn_like(x_t, generator)
        return x_prev, x0
