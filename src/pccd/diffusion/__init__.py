"""Diffusion processes for PCCD arrays: schedules, DDPM/DDIM samplers, loss, sampling loop.

Nothing here knows about crystals (no pymatgen): it sees (B, 3, 128, 3) arrays in [-1, 1], an
ε-predicting model and :class:`~pccd.conditioning.Conditions`.
"""

from pccd.diffusion.ddim import DDIMScheduler
from pccd.diffusion.ddpm import LOSSES, WEIGHTINGS, DDPMScheduler, diffusion_loss
from pccd.diffusion.sampling import (
    DEFAULT_PRECISION,
    PRECISIONS,
    SAMPLE_SHAPE,
    check_precision,
    denoise,
    guided_eps,
    native_bfloat16,
    network_precision,
    noise_to,
    reconstruct,
)
from pccd.diffusion.schedules import (
    PREDICTIONS,
    NoiseScheduler,
    alphas_cumprod,
    cosine_betas,
    linear_betas,
    make_betas,
    shift_snr,
)

__all__ = [
    "DEFAULT_PRECISION",
    "LOSSES",
    "PRECISIONS",
    "PREDICTIONS",
    "SAMPLE_SHAPE",
    "WEIGHTINGS",
    "DDIMScheduler",
    "DDPMScheduler",
    "NoiseScheduler",
    "alphas_cumprod",
    "check_precision",
    "cosine_betas",
    "denoise",
    "diffusion_loss",
    "guided_eps",
    "linear_betas",
    "make_betas",
    "native_bfloat16",
    "network_precision",
    "noise_to",
    "reconstruct",
    "shift_snr",
]
