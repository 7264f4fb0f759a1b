"""The three forward processes of the atom family and their reverse steps (torch only).

* :class:`TorusScore`: fractional coordinates under a wrapped normal of growing width σ_t
  (geometric from ``sigma_min`` to ``sigma_max``). The network learns the score of
  p(x_t | x_0), divided by its root-mean-square ``√λ_t`` so every t has a target of unit size.
* :class:`LatticeDDPM`: the lattice matrix, scaled by ``(N·v0)^(1/3)`` so cells of every size
  have entries of order one, under a variance-preserving DDPM with the cosine schedule
  (Nichol & Dhariwal 2021), ε-prediction.
* :class:`TypeMasking`: atom types replaced by a mask token with probability t/T, the absorbing
  discrete diffusion (Austin et al. 2021); the network predicts each masked atom's element
  among the crystal's own element list, and sampling unmasks atoms as t falls.

One timestep t ∈ {1..T} is shared by all three, as in DiffCSP.
"""

from __future__ import annotations

import math

import torch

WRAP_IMAGES = 4
"""Periodic images ±k summed in the wrapped normal: at σ ≤ 0.5 the next image weighs
exp(−3.5²/(2·0.5²)) ≈ 2e−11 of the nearest, so ±4 is exact to float64."""


GAUSSIAN_SIGMA = 0.05
"""Widest σ at which a wrapped normal on the unit circle is taken as a plain normal."""


def wrap(x: torch.Tensor) -> torch.Tensor:
    """Fractional coordinates back into [0, 1)."""
    return x - torch.floor(x)


def wrapped_normal_score(d: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """∇_d log Σ_k N(d + k; 0, σ²): the score of a wrapped normal at displacement ``d``.

    ``sigma`` broadcasts against ``d``. Computed with a log-sum-exp weighting over images so
    narrow σ (0.005) stays finite.
    """
    k = torch.arange(-WRAP_IMAGES, WRAP_IMAGES + 1, dtype=d.dtype, device=d.device)
    x = d.unsqueeze(-1) + k  # (..., images)
    s = sigma.unsqueeze(-1)
    logw = -(x**2) / (2 * s**2)
    w = torch.softmax(logw, dim=-1)
    return -(w * x).sum(-1) / sigma**2


class TorusScore:
    """Wrapped-normal diffusion of fractional coordinates on the 3-torus."""

    def __init__(
        self, timesteps: int = 1000, sigma_min: float = 0.005, sigma_max: float = 0.5
    ) -> None:
        self.timesteps = timesteps
        t = torch.arange(timesteps + 1, dtype=torch.float64)
        # sigmas[0] = 0 (clean), sigmas[1..T] geometric from sigma_min to sigma_max
        geo = sigma_min * (sigma_max / sigma_min) ** ((t[1:] - 1) / max(timesteps - 1, 1))
        self.sigmas = torch.cat([torch.zeros(1, dtype=torch.float64), geo]).float()
        self.norms = self._score_norms()

    def _score_norms(self, points: int = 256) -> torch.Tensor:
        """λ_t = E‖score‖² per coordinate under the process.

        Where σ ≤ :data:`GAUSSIAN_SIGMA` the wrapped normal differs from a normal only where
        its density is below exp(−0.5²/(2σ²)) ≈ 2e−22 (near d = ±½, where two images meet), so
        λ = 1/σ² to float64. Wider σ (half of the timesteps) use the periodic trapezoid rule,
        which converges exponentially for a smooth periodic integrand: with 256 points (the
        narrowest wide σ spans 13 of them) the float32 norms are bit-identical to 2,000
        points' (checked 2026-12-07; 128 points still were), and building a model (each
        ``pccd generate``) spends ~0.05 s here instead of ~0.7 s.
        """
        sig_all = self.sigmas[1:].double()
        lam = 1 / sig_all**2
        wide = sig_all > GAUSSIAN_SIGMA
        sig = sig_all[wide][:, None]
        d = (torch.arange(points, dtype=torch.float64) / points - 0.5)[None, :]
        k = torch.arange(-WRAP_IMAGES, WRAP_IMAGES + 1, dtype=torch.float64)
        density = torch.exp(-((d[..., None] + k) ** 2) / (2 * sig[..., None] ** 2)).sum(-1)
        score = wrapped_normal_score(d.expand(len(sig), -1), sig.expand(-1, points))
        lam[wide] = (density * score**2).sum(1) / density.sum(1)
        return torch.cat([torch.ones(1), lam.float()])

    def noise(
        self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, normalised score target) for clean ``x0`` (B, N, 3) at timesteps ``t`` (B,)."""
        sigma = self.sigmas.to(x0.device)[t].view(-1, 1, 1)
        eps = torch.randn(x0.shape, generator=generator).to(x0.device)
        d = sigma * eps
        norm = self.norms.to(x0.device)[t].sqrt().view(-1, 1, 1)
        target = wrapped_normal_score(d, sigma.expand_as(d)) / norm
        return wrap(x0 + d), target

    def score(self, prediction: torch.Tensor, t: int) -> torch.Tensor:
        """The network's normalised output at integer timestep ``t`` back to a score."""
        return prediction * math.sqrt(float(self.norms[t]))


def cosine_alpha_bar(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """ᾱ_t for t = 0..T of the cosine schedule, with ᾱ_0 = 1."""
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    abar = (f / f[0]).clamp(min=1e-8)
    # clip the betas at 0.999 as usual, which makes ᾱ_T tiny but non-zero
    betas = (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)]).float()


MAX_ROW_NORM = 16.0
"""Longest scaled lattice vector a clean estimate may have: the bulk training split's longest is
15.2 (99.99th percentile 6.6), in units of (N·v0)^(1/3)."""


class LatticeDDPM:
    """Variance-preserving diffusion of the scaled lattice matrix (ε-prediction)."""

    def __init__(self, timesteps: int = 1000) -> None:
        self.timesteps = timesteps
        self.alpha_bar = cosine_alpha_bar(timesteps)

    def noise(
        self, l0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(l_t, ε) for clean scaled lattices ``l0`` (B, 3, 3)."""
        ab = self.alpha_bar.to(l0.device)[t].view(-1, 1, 1)
        eps = torch.randn(l0.shape, generator=generator).to(l0.device)
        return ab.sqrt() * l0 + (1 - ab).sqrt() * eps, eps

    def clean_estimate(self, lt: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
        """l̂_0 from l_t and predicted ε at integer timestep ``t``, each lattice vector's
        length clipped to :data:`MAX_ROW_NORM`.

        Why the clip: near t = T, ᾱ_t is ~1e-8, so l̂_0 = (l_t − √(1−ᾱ)ε̂)/√ᾱ multiplies the
        network's error in ε̂ by up to 10⁴; a step to s ≪ t carries √(ᾱ_s/ᾱ_t) of it forward
        (×150 from t = 1000 to 990), enough to leave cells with 2,500 Å edges on a 100-step
        grid. A clean lattice never has such vectors, so the estimate is pulled back to the
        training data's range, as image DDPMs clip x̂_0 to [−1, 1].
        """
        return self._clipped_estimate(lt, eps, t)[0]

    def _clipped_estimate(
        self, lt: torch.Tensor, eps: torch.Tensor, t: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(l̂_0 clipped, which lattice vectors were clipped (B, 3, 1))."""
        ab = float(self.alpha_bar[t])
        l0 = (lt - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        norm = torch.linalg.vector_norm(l0, dim=-1, keepdim=True)
        return l0 * (MAX_ROW_NORM / norm.clamp(min=MAX_ROW_NORM)), norm > MAX_ROW_NORM

    def step(
        self,
        lt: torch.Tensor,
        eps: torch.Tensor,
        t: int,
        s: int,
        eta: float,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Move from timestep ``t`` to ``s < t``: DDIM with stochasticity ``eta`` (1 = DDPM
        ancestral variance when s = t − 1, 0 = deterministic)."""
        ab_t, ab_s = float(self.alpha_bar[t]), float(self.alpha_bar[s])
        l0, clipped = self._clipped_estimate(lt, eps, t)
        # a clipped vector's ε follows its clipped estimate
        eps = torch.where(clipped, (lt - math.sqrt(ab_t) * l0) / math.sqrt(1 - ab_t), eps)
        var = eta**2 * (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)
        dir_coef = math.sqrt(max(1 - ab_s - var, 0.0))
        out = math.sqrt(ab_s) * l0 + dir_coef * eps
        if var > 0:
            z = torch.randn(lt.shape, generator=generator, device="cpu").to(lt.device)
            out = out + math.sqrt(var) * z
        return out


class TypeMasking:
    """Absorbing-state diffusion of atom types: masked with probability t/T."""

    def __init__(self, timesteps: int = 1000) -> None:
        self.timesteps = timesteps

    def rate(self, t: torch.Tensor | int) -> torch.Tensor | float:
        """Probability that an atom's type is masked at timestep ``t``."""
        return t / self.timesteps
