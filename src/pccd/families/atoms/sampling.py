"""Reverse processes of the atom family: from noise to (types, coordinates, lattice).

Two samplers walk the same model backwards:

* ``pc`` — the published predictor–corrector (DiffCSP), the default: at each step of the grid
  (100 by default, all T = 1000 as the reference), one Langevin corrector step on the
  coordinates (below t = 0.7·T, :data:`CORRECTOR_FROM`), then a reverse-SDE predictor on the
  coordinates and an ancestral DDPM step on the lattice; two network calls per step where the
  corrector runs, one above.
* ``sde`` — the predictor alone (reverse SDE on the coordinates, ancestral DDPM on the
  lattice): one network call per step, half the cost of ``pc`` on the same grid.
* ``ode`` — a subset of timesteps, one call each, the probability-flow ODE on
  the coordinates (half the predictor's drift, no noise) and DDIM (η = 0) on the lattice.

Types of a de novo request start masked and are unmasked as t falls: at each step from t to s,
a masked atom is drawn from the predicted element distribution with probability (t − s)/t, the
reverse of :class:`~pccd.families.atoms.processes.TypeMasking`. At the last step every atom has
a type; if an element of the request is missing, :func:`_complete_elements` gives it to the
atom the model found likeliest for it, so the cell has exactly the requested elements.

Sampling is seeded by a CPU ``torch.Generator``, so the same seed gives the same crystals on the
same machine whatever the device.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from pccd.families.atoms.batch import AtomBatch
from pccd.families.atoms.denoiser import MASK_TOKEN
from pccd.families.atoms.diffusion import AtomDiffusion
from pccd.families.atoms.processes import wrap

SAMPLERS = ("pc", "sde", "ode")
"""The first is the default: predictor–corrector, on a 100-step grid. Measured on the shipped
``pccd-atoms`` (2026-12-07, 300 bulk-val element lists + 300 bulk-val formulas, quiet 2-core
CPU, benchmarks/results/atoms_samplers_pccd-atoms.jsonl): de novo plausible / above P1 and the
CSP match rate are 84 / 42 / 20% for pc:50 (3.5 s per 100 crystals), 88 / 52 / 23% for pc:100
(6.5 s) and 93 / 58 / 23% for pc:200 (13.2 s). pc:100 keeps ``pccd generate -n 100`` near the
point-cloud model's speed; ``--steps 200`` buys the last 5 points of plausible share. ``sde``
(predictor only) and ``ode`` are far behind at the same cost (benchmarks/results/
atoms_samplers_s128_clip.jsonl: 68% and 59% plausible)."""
DEFAULT_STEPS = {"pc": 100, "sde": 200, "ode": 200}
"""Steps per sampler (``steps=None``); ``--steps 1000`` walks every timestep (the reference)."""
CORRECTOR_STEP = 1e-5
"""Langevin corrector step γ of ``pc`` at σ_min: δ_t = γ (σ_t / σ_min)² (DiffCSP's MP-20 CSP)."""
CORRECTOR_FROM = 0.7
"""``pc`` runs its corrector only at timesteps t ≤ CORRECTOR_FROM · T; DiffCSP runs it at every
step (1.0). Above 0.7·T the coordinates' noise is σ > 0.2 of the cell, nearly uniform on the
torus, and a Langevin step there refines nothing the predictor does not redo. Measured on the
shipped ``pccd-atoms`` (2026-12-07, 300 + 300 bulk-val requests, seeds 0 and 1, pc:100,
benchmarks/results/atoms_corrector_window.jsonl): de novo plausible / above P1 and CSP match
89.5 / 52.7 / 19.8% with the window against 88.2 / 50.2 / 20.7% without, the same within the
sampling error (±1.3–1.7 points), for 170 network calls instead of 200."""


@dataclass(frozen=True)
class SampleSpec:
    """What to generate, per cell: element slots, atom count and (for CSP) the types."""

    slots: torch.Tensor  # (B, 3) Z ascending, 0 empty
    num_atoms: torch.Tensor  # (B,)
    types: torch.Tensor | None = None
    """(B, N) known atomic numbers (CSP), 0 (the mask token) where the model chooses; None:
    the model chooses every atom's element (de novo)."""
    band_gap: torch.Tensor | None = None  # (B,) NaN = not asked
    stability: torch.Tensor | None = None  # (B,) −1 = not asked


def timestep_grid(timesteps: int, steps: int | None) -> list[int]:
    """Descending timesteps T = t_0 > … > t_{S−1} ≥ 1, then 0 appended."""
    if steps is None or steps >= timesteps:
        grid = list(range(timesteps, 0, -1))
    else:
        if steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {steps}")
        grid = sorted({round(v) for v in np.linspace(timesteps, 1, steps).tolist()}, reverse=True)
    return [*grid, 0]


def _randn(shape, generator, device) -> torch.Tensor:
    return torch.randn(shape, generator=generator).to(device)


GUIDABLE = ("band_gap", "stability")
"""Conditions classifier-free guidance can amplify (elements and formula are always given)."""


class _Guided:
    """The network's outputs at one state (fp32), with classifier-free guidance when asked.

    Guidance ``s`` returns u + s·(c − u), c the conditional output and u the output with the
    conditions named in ``guide`` (default: all guidable ones) set to their null vectors.
    """

    def __init__(
        self, model: AtomDiffusion, spec: SampleSpec, mask, guidance: float, guide
    ) -> None:
        self.model, self.spec, self.mask, self.guidance = model, spec, mask, guidance
        guide = GUIDABLE if guide is None else tuple(guide)
        self.null_gap = None if "band_gap" in guide else spec.band_gap
        self.null_stability = None if "stability" in guide else spec.stability
        asked = spec.band_gap is not None and bool((~torch.isnan(spec.band_gap)).any())
        asked |= spec.stability is not None and bool((spec.stability >= 0).any())
        self.guided = asked and guidance != 1.0

    def __call__(self, types, x, lat, t: int):
        b = x.shape[0]
        tt = torch.full((b,), t, dtype=torch.long, device=x.device)
        net = self.model.net
        out = net(types, x, lat, self.mask, tt, self.spec.slots, self.spec.band_gap,
                  self.spec.stability)  # fmt: skip
        out = tuple(o.float() for o in out)
        if not self.guided:
            return out
        null = net(types, x, lat, self.mask, tt, self.spec.slots, self.null_gap,
                   self.null_stability)  # fmt: skip
        s = self.guidance
        score, eps, logits = (
            u.float() + s * (c - u.float()) for c, u in zip(out, null, strict=True)
        )
        # an empty element slot is −inf in both branches; keep it −inf, not −inf − (−inf) = NaN
        return score, eps, logits.masked_fill(torch.isinf(out[2]), float("-inf"))


@torch.no_grad()
def sample(
    model: AtomDiffusion,
    spec: SampleSpec,
    *,
    sampler: str = SAMPLERS[0],
    steps: int | None = None,
    guidance: float = 1.0,
    guide: tuple[str, ...] | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> AtomBatch:
    """Generate one batch of cells (types, coordinates in [0, 1), scaled lattice, mask)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, not {sampler!r}")
    if steps is None:
        steps = DEFAULT_STEPS[sampler]
    model.eval()
    b = len(spec.num_atoms)
    width = int(spec.num_atoms.max())
    mask = (torch.arange(width)[None, :] < spec.num_atoms[:, None]).to(device)
    slots = spec.slots.to(device)
    spec = SampleSpec(
        slots, spec.num_atoms.to(device),
        None if spec.types is None else spec.types[:, :width].to(device),
        None if spec.band_gap is None else spec.band_gap.to(device),
        None if spec.stability is None else spec.stability.to(device),
    )  # fmt: skip
    x = torch.rand((b, width, 3), generator=generator).to(device)
    lat = _randn((b, 3, 3), generator, device)
    if spec.types is not None:
        types = spec.types
    else:
        types = torch.full((b, width), MASK_TOKEN, dtype=torch.long, device=device)
    net = _Guided(model, spec, mask, guidance, guide)
    sig = model.torus.sigmas
    grid = timestep_grid(model.timesteps, steps)
    for t, s in itertools.pairwise(grid):
        st, ss = float(sig[t]), float(sig[s])
        if sampler == "pc" and t <= CORRECTOR_FROM * model.timesteps:
            score, _, _ = net(types, x, lat, t)
            delta = CORRECTOR_STEP * (st / float(sig[1])) ** 2
            x = x + delta * model.torus.score(score, t)
            x = wrap(x + math.sqrt(2 * delta) * _randn(x.shape, generator, device))
        score, eps, logits = net(types, x, lat, t)
        drift = (st**2 - ss**2) * model.torus.score(score, t)
        if sampler != "ode":
            noise_std = math.sqrt(ss**2 * (st**2 - ss**2) / st**2)
            x = wrap(x + drift + noise_std * _randn(x.shape, generator, device))
            lat = model.lattice.step(lat, eps, t, s, eta=1.0, generator=generator)
        else:
            x = wrap(x + 0.5 * drift)
            lat = model.lattice.step(lat, eps, t, s, eta=0.0, generator=generator)
        types = _unmask(types, logits, mask, t, s, slots, generator)
    types = _complete_elements(types, logits, mask, slots)
    return AtomBatch(
        types=types.cpu(), frac=x.cpu(), lattice=lat.cpu(), mask=mask.cpu(), slots=slots.cpu(),
        band_gap=torch.full((b,), float("nan")) if spec.band_gap is None else spec.band_gap.cpu(),
        stability=torch.full((b,), -1) if spec.stability is None else spec.stability.cpu(),
    )  # fmt: skip


def _unmask(types, logits, mask, t: int, s: int, slots, generator) -> torch.Tensor:
    """Unmask each masked atom with probability (t − s)/t, its element drawn from the logits."""
    masked = (types == MASK_TOKEN) & mask
    if not masked.any():
        return types
    prob = torch.softmax(logits.float(), dim=-1)
    u = torch.rand(masked.shape, generator=generator).to(types.device)
    reveal = masked & (u < (t - s) / t)
    flat = prob.reshape(-1, prob.shape[-1]).cpu()
    pick = torch.multinomial(flat, 1, generator=generator).view(prob.shape[:-1]).to(types.device)
    drawn = torch.gather(slots, 1, pick)
    return torch.where(reveal, drawn, types)


def _complete_elements(types, logits, mask, slots) -> torch.Tensor:
    """Give each requested element that no atom took to the atom likeliest to be it.

    Only atoms whose element occurs more than once may change, so no element is lost in
    turn. A cell with fewer atoms than elements cannot be completed and is left as drawn.
    """
    types = types.clone()
    for i in range(types.shape[0]):
        n = int(mask[i].sum())
        wanted = [int(z) for z in slots[i] if z > 0]
        if n < len(wanted):
            continue
        for k, z in enumerate(wanted):
            row = types[i, :n]
            if (row == z).any():
                continue
            counts = {int(v): int((row == v).sum()) for v in row.unique()}
            movable = torch.tensor([counts[int(v)] > 1 for v in row], device=types.device)
            score = logits[i, :n, k].masked_fill(~movable, float("-inf"))
            types[i, int(score.argmax())] = z
    return types
