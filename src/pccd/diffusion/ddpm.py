"""DDPM ancestral sampling (Ho et al. 2020) and the training loss."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from pccd.conditioning import Conditions
from pccd.diffusion.schedules import NoiseScheduler, randn_like

VARIANCE_TYPES = ("fixed_small", "fixed_large")
LOSSES = ("l1", "l2")
WEIGHTINGS = ("none", "min_snr")
"""Per-timestep loss weights: ``"none"`` (the paper: every step alike) or ``"min_snr"``."""


class DDPMScheduler(NoiseScheduler):
    """Ancestral sampler: x_{t'} ~ q(x_{t'} | x_t, x̂_0), the Gaussian posterior.

    Works on any decreasing sub-sequence of steps (:meth:`set_timesteps` with n < T): the
    posterior between two scheduled steps t > t' uses the effective β = 1 − ᾱ_t/ᾱ_{t'}, so a
    strided chain is still an exact ancestral sampler of the same forward process.

    Args:
        variance_type: ``"fixed_small"`` (default): σ² = β̃ = β(1−ᾱ_{t'})/(1−ᾱ_t), the true
            posterior variance, best for a well-trained model; ``"fixed_large"``: σ² = β, the
            other bound of Ho et al.
        (other arguments: see :class:`~pccd.diffusion.schedules.NoiseScheduler`)
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        schedule: str = "cosine",
        clip_sample: bool = True,
        timestep_spacing: str = "trailing",
        variance_type: str = "fixed_small",
        snr_shift: float = 1.0,
        prediction: str = "epsilon",
    ) -> None:
        super().__init__(
            num_train_timesteps, schedule, clip_sample, timestep_spacing, snr_shift, prediction
        )
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(
                f"variance_type must be one of {VARIANCE_TYPES}, got {variance_type!r}"
            )
        self.variance_type = variance_type

    @property
    def config(self) -> dict:
        return {**super().config, "variance_type": self.variance_type}

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
        beta = 1.0 - abar_t / abar_prev
        x0 = self.predict_x0(eps, t, x_t)
        # Posterior mean of q(x_{t'} | x_t, x_0) (Ho et al. eq. 7), evaluated at x̂_0.
        c0 = math.sqrt(abar_prev) * beta / (1.0 - abar_t)
        ct = math.sqrt(1.0 - beta) * (1.0 - abar_prev) / (1.0 - abar_t)
        mean = c0 * x0 + ct * x_t
        if t_prev < 0:
            return mean, x0  # the last step is the mean: no noise on the final sample
        if self.variance_type == "fixed_small":
            var = beta * (1.0 - abar_prev) / (1.0 - abar_t)
        else:
            var = beta
        return mean + math.sqrt(var) * randn_like(x_t, generator), x0


def diffusion_loss(
    model: nn.Module,
    scheduler: NoiseScheduler,
    x0: torch.Tensor,
    cond: Conditions,
    generator: torch.Generator | None = None,
    loss: str = "l1",
    *,
    drop_probs: Mapping[str, float] | None = None,
    weighting: str = "none",
    snr_gamma: float = 5.0,
    x0_penalty: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Denoising loss at a uniformly drawn step per sample (scalar mean).

    ``t ~ U{0..T−1}``, ``ε ~ N(0, I)``, ``x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε``, loss = ‖ε_θ(x_t, t, c) − ε‖
    (or against v, :meth:`NoiseScheduler.training_target`, when ``scheduler.prediction`` is v)
    with the L1 norm (the paper's choice, more robust to the heavy-tailed errors of the
    discrete channel-1 entries) or ``"l2"`` (the DDPM "simple" loss).

    Self-conditioning models (``model.self_conditioning``) get ``x_self`` as well.

    ``drop_probs`` (optional) applies :meth:`Conditions.drop` first, with the same generator:
    classifier-free-guidance training in one call.

    ``weighting="min_snr"`` (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
    Weighting Strategy") scales each sample's loss by min(SNR_t, γ) / SNR_t, SNR_t = ᾱ_t/(1−ᾱ_t).
    With ε as the target, the near-clean steps (SNR ≫ γ) otherwise dominate the gradient although
    they only polish positions the earlier steps chose; the weight moves the budget to the
    mid-noise steps where the arrangement of atoms is decided. ``"none"`` is the paper's loss.

    ``x0_penalty(x̂_0, x_0)`` (optional) is added to the loss, with x̂_0 the clean-array estimate
    of this prediction (clipped to [-1, 1]): a hook for losses on what x̂_0 means, which this
    module does not know (e.g. :func:`pccd.pair_loss.pair_distance_loss`).
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if snr_gamma <= 0:
        raise ValueError(f"snr_gamma must be > 0, got {snr_gamma}")
    if drop_probs:
        cond = cond.drop(drop_probs, generator)
    b = x0.shape[0]
    gen_device = generator.device if generator is not None else x0.device
    t = torch.randint(
        0, scheduler.num_train_timesteps, (b,), generator=generator, device=gen_device
    ).to(x0.device)
    noise = randn_like(x0, generator)
    x_t = scheduler.add_noise(x0, noise, t)
    kwargs = {}
    if getattr(model, "self_conditioning", False):
        # half the samples see the model's own first estimate of x_0 (no gradient through it),
        # the others zeros, so the network works both at the first step and with an estimate
        use = torch.rand(b, generator=generator, device=gen_device).to(x0.device) < 0.5
        x_self = torch.zeros_like(x0)
        if bool(use.any()):
            with torch.no_grad():
                eps = scheduler.eps_from_output(model(x_t, t, cond, x_self=x_self), t, x_t)
                estimate = scheduler.predict_x0_batch(eps, t, x_t)
            x_self = torch.where(use[:, None, None, None], estimate, x_self)
        kwargs["x_self"] = x_self
    pred = model(x_t, t, cond, **kwargs).float()  # the loss in fp32 under bf16 autocast
    target = scheduler.training_target(x0, noise, t)
    fn = F.l1_loss if loss == "l1" else F.mse_loss
    if weighting == "none":
        value = fn(pred, target)
    else:
        per_sample = fn(pred, target, reduction="none").flatten(1).mean(dim=1)
        abar = scheduler.alphas_cumprod.to(x0.device, torch.float32)[t]
        snr = abar / (1.0 - abar)
        # min(SNR, γ) as the weight of the x_0 error: ε carries it as SNR, v as SNR + 1
        carried = snr if scheduler.prediction == "epsilon" else snr + 1.0
        value = (per_sample * torch.clamp(snr, max=snr_gamma) / carried).mean()
    if x0_penalty is None:
        return value
    x0_hat = scheduler.predict_x0_batch(scheduler.eps_from_output(pred, t, x_t), t, x_t)
    return value + x0_penalty(x0_hat, x0)
