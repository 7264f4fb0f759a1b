"""Noise schedules β_1..β_T as pure float64 functions.

Everything derived from the schedule (ᾱ_t, posterior coefficients) is computed in float64 and
only cast to the sample's dtype when applied: with T = 1000 and ᾱ_T ≈ 1e-5, float32 cumulative
products and differences like ``1 - ᾱ`` lose digits that matter near both ends of the chain.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pccd.errors import InputError

SCHEDULES = ("cosine", "linear")
PREDICTIONS = ("epsilon", "v")
"""What the network outputs: the noise ε (the paper, DDPM) or the velocity
v = √ᾱ ε − √(1−ᾱ) x_0 (Salimans & Ho 2022)."""


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Cosine schedule of Nichol & Dhariwal (2021), shape (T,), float64.

    ᾱ(t) = f(t) / f(0) with f(t) = cos²(π/2 · (t/T + s) / (1 + s)), and β_t = 1 − ᾱ(t)/ᾱ(t−1).
    Compared with the linear schedule it destroys information more evenly over t (the linear one
    is almost pure noise for the last ~third of the chain), which matters for a small array like
    ours. The offset ``s`` keeps β_1 from being vanishingly small; ``max_beta`` clips the last
    steps, where ᾱ → 0 would make β_T = 1 (a singular reverse step).
    """
    if T < 1:
        raise ValueError(f"T must be ≥ 1, got {T}")
    steps = np.arange(T + 1, dtype=np.float64) / T
    f = np.cos((steps + s) / (1.0 + s) * math.pi / 2.0) ** 2
    abar = f / f[0]
    betas = 1.0 - abar[1:] / abar[:-1]
    return np.clip(betas, 0.0, max_beta)


def linear_betas(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Linear schedule of Ho et al. (2020), shape (T,), float64.

    The endpoints are specified for T = 1000 and scaled by 1000/T, so a shorter chain destroys
    the same amount of signal overall (the convention of Nichol & Dhariwal 2021).
    """
    if T < 1:
        raise ValueError(f"T must be ≥ 1, got {T}")
    scale = 1000.0 / T
    return np.linspace(scale * beta_start, scale * beta_end, T, dtype=np.float64)


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    """ᾱ_t = Π_{s≤t} (1 − β_s), float64; index t = 0..T−1 (0 is the first noising step)."""
    return np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))


def shift_snr(betas: np.ndarray, snr_shift: float, max_beta: float = 0.999) -> np.ndarray:
    """β of the schedule whose signal-to-noise ratio is the given one's divided by ``snr_shift``.

    SNR_t = ᾱ_t / (1 − ᾱ_t) becomes SNR_t / k, i.e. ᾱ'_t = ᾱ_t / (ᾱ_t + k (1 − ᾱ_t)), the
    "shifted" schedule of Hoogeboom et al. (2023, simple diffusion) and Chen (2023). Why PCCD
    needs it: every atom is repeated over ~128/N rows, and averaging K noisy copies divides the
    noise variance by K, so the network sees each *atom* at K times the SNR the schedule gives a
    row. Under the plain cosine the atoms' positions are settled by t ≈ 600 of 1000 (BENCHMARKS,
    issue 11): most training steps and most sampling steps are spent where nothing is decided.
    Dividing the SNR by k ≈ K gives the atoms the noise levels the cosine meant for a value
    seen once. Measured (BENCHMARKS, issue 11, run 4): k = 16 does spread the placement over the
    whole chain, but the atoms it places are no more plausible, so the default stays the paper's
    schedule. k = 1 returns ``betas`` unchanged.
    """
    if not snr_shift > 0:
        raise ValueError(f"snr_shift must be > 0, got {snr_shift}")
    if snr_shift == 1.0:
        return np.asarray(betas, dtype=np.float64)
    abar = alphas_cumprod(betas)
    shifted = abar / (abar + snr_shift * (1.0 - abar))
    ratio = shifted / np.concatenate([[1.0], shifted[:-1]])
    return np.clip(1.0 - ratio, 0.0, max_beta)


def make_betas(schedule: str, T: int, snr_shift: float = 1.0) -> np.ndarray:
    """β for a schedule name in :data:`SCHEDULES`, its SNR divided by ``snr_shift``."""
    if schedule == "cosine":
        betas = cosine_betas(T)
    elif schedule == "linear":
        betas = linear_betas(T)
    else:
        raise ValueError(f"unknown schedule {schedule!r}; use one of {SCHEDULES}")
    return shift_snr(betas, snr_shift)


TIMESTEP_SPACINGS = ("trailing", "leading")


class NoiseScheduler:
    """Schedule state and the closed forms shared by the DDPM and DDIM samplers.

    Not an ``nn.Module`` (as in diffusers): it has no parameters, and keeping it out of the
    model's state dict means a trained network can be sampled with any scheduler.

    Args:
        num_train_timesteps: T, the length of the forward chain used in training.
        schedule: ``"cosine"`` (default) or ``"linear"``.
        snr_shift: divide the schedule's SNR by this factor (:func:`shift_snr`); 1 is the
            paper's schedule.
        prediction: what the network outputs, one of :data:`PREDICTIONS`. ``"epsilon"`` is the
            paper's. With ``"v"`` an error δ in x̂_0 costs √(1−ᾱ)^-1 δ instead of √SNR δ, so
            the low-SNR steps, where PCCD's atoms are placed (BENCHMARKS, issue 11), are not
            nearly free in the loss; samplers convert the output with :meth:`eps_from_output`.
            Measured with ``snr_shift=16`` (BENCHMARKS, run 4b): no more plausible than ε.
        clip_sample: clip the predicted x̂_0 to [-1, 1] (the data range) at every step; this
            keeps early, very noisy predictions from throwing the chain outside the data range.
        timestep_spacing: how :meth:`set_timesteps` picks n of the T steps (see there).

    Attributes:
        betas, alphas_cumprod: float64 tensors of length T.
        timesteps: long tensor of the steps the reverse chain visits, descending.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        schedule: str = "cosine",
        clip_sample: bool = True,
        timestep_spacing: str = "trailing",
        snr_shift: float = 1.0,
        prediction: str = "epsilon",
    ) -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {timestep_spacing!r}"
            )
        self.num_train_timesteps = int(num_train_timesteps)
        self.schedule = schedule
        self.clip_sample = bool(clip_sample)
        self.timestep_spacing = timestep_spacing
        self.snr_shift = float(snr_shift)
        self.prediction = prediction
        self.betas = torch.from_numpy(
            make_betas(schedule, self.num_train_timesteps, self.snr_shift)
        )
        self.alphas_cumprod = torch.from_numpy(alphas_cumprod(self.betas.numpy()))
        self.timesteps = torch.arange(self.num_train_timesteps - 1, -1, -1, dtype=torch.long)

    # ------------------------------------------------------------------ bookkeeping
    @property
    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable), to rebuild an identical scheduler."""
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "schedule": self.schedule,
            "clip_sample": self.clip_sample,
            "timestep_spacing": self.timestep_spacing,
            "snr_shift": self.snr_shift,
            "prediction": self.prediction,
        }

    @property
    def num_inference_steps(self) -> int:
        return len(self.timesteps)

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Choose the ``num_inference_steps`` steps of the reverse chain (descending).

        ``"trailing"`` (default): ``round(T − i·T/n) − 1`` for i = 0..n−1, so the chain always
        starts at t = T−1, where x_T is (almost exactly) pure noise, and ends at a small t;
        ``"leading"``: ``i·(T//n)`` (DDIM paper), which ends at t = 0 but starts at
        T − T/n — with few steps the first step then sees a noise level the model would
        expect to contain signal (Lin et al. 2024). With n = T both give every step.
        """
        n = int(num_inference_steps)
        T = self.num_train_timesteps
        if not 1 <= n <= T:
            raise InputError(f"num_inference_steps must be in 1..{T}, got {n}")
        if self.timestep_spacing == "trailing":
            steps = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
        else:
            steps = (np.arange(n) * (T // n))[::-1].copy()
        self.timesteps = torch.from_numpy(steps[:n]).long()

    def timesteps_from(self, start_t: int) -> torch.Tensor:
        """The chain started at ``start_t`` (reconstruction): ``start_t`` then every scheduled
        step below it."""
        start_t = int(start_t)
        if not 0 <= start_t < self.num_train_timesteps:
            raise InputError(f"start_t must be in 0..{self.num_train_timesteps - 1}, got {start_t}")
        below = self.timesteps[self.timesteps < start_t]
        return torch.cat([torch.tensor([start_t], dtype=torch.long), below])

    def previous_timestep(self, t: int) -> int:
        """The step after ``t`` in the reverse chain: the next scheduled step below ``t``, or
        −1 (clean data, ᾱ = 1) when ``t`` is the last one."""
        below = self.timesteps[self.timesteps < int(t)]
        return int(below.max()) if len(below) else -1

    def _abar(self, t: int) -> float:
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    # ------------------------------------------------------------------ closed forms
    def _gather(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t] (float64 → like.dtype) broadcast to ``like`` (B, 1, 1, …)."""
        out = values.to(t.device)[t].to(like.dtype)
        return out.view(-1, *([1] * (like.dim() - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Sample q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) with the given ``noise``.

        ``t`` is a (B,) long tensor (one step per sample) or an int for the whole batch.
        """
        t = _as_batch(t, x0)
        abar = self._gather(self.alphas_cumprod, t, x0)
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise

    def training_target(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int
    ) -> torch.Tensor:
        """What the network should output for x_t = add_noise(x0, noise, t): ε, or v."""
        if self.prediction == "epsilon":
            return noise
        abar = self._gather(self.alphas_cumprod, _as_batch(t, x0), x0)
        return abar.sqrt() * noise - (1.0 - abar).sqrt() * x0

    def eps_from_output(
        self, output: torch.Tensor, t: torch.Tensor | int, x_t: torch.Tensor
    ) -> torch.Tensor:
        """ε̂ from the network's output at step ``t`` (identity for ε-prediction).

        For v: ε̂ = √ᾱ v̂ + √(1−ᾱ) x_t. The map is affine in the output with x_t fixed, so
        classifier-free guidance may combine raw outputs before it (as :func:`guided_eps` does).
        """
        if self.prediction == "epsilon":
            return output
        abar = self._gather(self.alphas_cumprod, _as_batch(t, x_t), x_t)
        return abar.sqrt() * output + (1.0 - abar).sqrt() * x_t

    def predict_x0(self, eps: torch.Tensor, t: int, x_t: torch.Tensor) -> torch.Tensor:
        """x̂_0 = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t, clipped to [-1, 1] when ``clip_sample``."""
        abar = self._abar(t)
        x0 = (x_t - math.sqrt(1.0 - abar) * eps) / math.sqrt(abar)
        return x0.clamp(-1.0, 1.0) if self.clip_sample else x0

    def predict_x0_batch(
        self, eps: torch.Tensor, t: torch.Tensor, x_t: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`predict_x0` with one step per sample (``t`` of shape (B,)), always clipped."""
        abar = self._gather(self.alphas_cumprod, t, x_t)
        return ((x_t - (1.0 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1.0, 1.0)

    def eps_from_x0(self, x0: torch.Tensor, t: int, x_t: torch.Tensor) -> torch.Tensor:
        """The noise consistent with ``x_t`` and an x̂_0 (used after clipping x̂_0)."""
        abar = self._abar(t)
        return (x_t - math.sqrt(abar) * x0) / math.sqrt(1.0 - abar)

    def step(
        self,
        eps: torch.Tensor,
        t: int,
        x_t: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One reverse step from ``x_t`` at step ``t`` to the previous scheduled step.

        Returns ``(x_prev, x0_pred)``; after the last step ``x_prev`` is the clean sample.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({args}, num_inference_steps={self.num_inference_steps})"


def _as_batch(t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    if isinstance(t, int):
        return torch.full((like.shape[0],), t, dtype=torch.long, device=like.device)
    t = torch.as_tensor(t, device=like.device).long()
    return t.expand(like.shape[0]) if t.dim() == 0 else t


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, drawn on the generator's device (so a seeded
    CPU generator gives the same numbers whatever device the model runs on)."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
