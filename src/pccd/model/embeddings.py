"""Time and condition embeddings: everything the U-Net is told besides the noisy array.

The time step and every condition are mapped to vectors of the same width and *summed*; the
sum drives FiLM (scale/shift) in every residual block. Summation makes each condition an
independent, optional additive term: dropping one only swaps its term for that condition's
learned null vector, so the network can be trained (and guided) with any subset present.

Null vectors are real parameters that receive gradients whenever a condition is missing in a
training batch — the prerequisite for classifier-free guidance (ε(x_t | ∅) must be learned,
not a fixed zero that the network never saw).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pccd.conditioning import (
    CONDITION_NAMES,
    MAGNETIC_ORDERINGS,
    MAX_ATOMS,
    MAX_SLOTS,
    MAX_Z,
    STABILITY_LABELS,
    Conditions,
)


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer-style sin/cos features of the (integer or real) time step, shape (B, dim).

    Frequencies are geometric from 1 to 1/max_period so both neighbouring steps and the
    coarse position in the 1000-step chain are distinguishable.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def mlp(d_in: int, d_out: int) -> nn.Sequential:
    """Two-layer MLP used by every embedding head."""
    return nn.Sequential(nn.Linear(d_in, d_out), nn.SiLU(), nn.Linear(d_out, d_out))


class TimeEmbedding(nn.Module):
    """Sinusoidal features of t followed by an MLP (B,) → (B, emb_dim)."""

    def __init__(self, freq_dim: int, emb_dim: int) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = mlp(freq_dim, emb_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t, self.freq_dim))


class ConditionEncoder(nn.Module):
    """Map a :class:`~pccd.conditioning.Conditions` batch to a (B, emb_dim) vector.

    * elements — an atomic-number embedding (index 0 = empty slot, ``MAX_Z + 1`` = null) plus
      a slot-position embedding, concatenated over the 3 slots and passed through an MLP.
      Concatenating (not pooling) keeps the slot order, which matters: slot k is the element
      of the representation's channel-1 column k.
    * band gap — Fourier features of ``gap / band_gap_scale`` (plus the value itself) → MLP;
      a learned null vector replaces the output where the gap is NaN.
    * magnetic ordering — an embedding with an extra null index.
    * formula — per-slot count embedding (0..MAX_ATOMS, plus a null index) plus slot position,
      concatenated → MLP; all slots take the null index when the formula is missing.
    * stability — like magnetic ordering: an embedding of the label with an extra null index.

    Only the conditions named in ``conditions`` get parameters; the others are ignored, so a
    model trained without e.g. magnetic labels has no untrained weights, and a model saved
    before a condition existed (its config lists the conditions it had) loads unchanged and
    ignores the new field.
    """

    def __init__(
        self,
        emb_dim: int,
        token_dim: int,
        conditions: Sequence[str] = CONDITION_NAMES,
        band_gap_frequencies: int = 8,
        band_gap_scale: float = 10.0,
    ) -> None:
        super().__init__()
        unknown = set(conditions) - set(CONDITION_NAMES)
        if unknown:
            raise ValueError(f"unknown condition(s) {sorted(unknown)}; use {CONDITION_NAMES}")
        self.conditions = tuple(c for c in CONDITION_NAMES if c in conditions)
        self.emb_dim = emb_dim
        if "elements" in self.conditions:
            self.element_null = MAX_Z + 1
            self.element_embed = nn.Embedding(MAX_Z + 2, token_dim)
            self.element_slot = nn.Embedding(MAX_SLOTS, token_dim)
            self.element_mlp = mlp(MAX_SLOTS * token_dim, emb_dim)
        if "band_gap" in self.conditions:
            self.band_gap_scale = band_gap_scale
            # Frequencies 2^k·π over [0, 1]-ish inputs resolve both coarse (metal vs
            # insulator) and fine (0.1 eV) differences once the gap is divided by the scale.
            self.register_buffer(
                "band_gap_freqs",
                math.pi * 2.0 ** torch.arange(band_gap_frequencies, dtype=torch.float32),
                persistent=False,
            )
            self.band_gap_mlp = mlp(2 * band_gap_frequencies + 1, emb_dim)
            self.band_gap_null = nn.Parameter(torch.randn(emb_dim) * 0.02)
        if "magnetic" in self.conditions:
            self.magnetic_null = len(MAGNETIC_ORDERINGS)
            self.magnetic_embed = nn.Embedding(len(MAGNETIC_ORDERINGS) + 1, emb_dim)
        if "formula" in self.conditions:
            self.formula_null = MAX_ATOMS + 1
            self.count_embed = nn.Embedding(MAX_ATOMS + 2, token_dim)
            self.formula_slot = nn.Embedding(MAX_SLOTS, token_dim)
            self.formula_mlp = mlp(MAX_SLOTS * token_dim, emb_dim)
        if "stability" in self.conditions:
            self.stability_null = len(STABILITY_LABELS)
            self.stability_embed = nn.Embedding(len(STABILITY_LABELS) + 1, emb_dim)

    def forward(self, cond: Conditions) -> torch.Tensor:
        b = cond.batch_size
        out = torch.zeros(b, self.emb_dim, device=cond.device)
        slots = torch.arange(MAX_SLOTS, device=cond.device)
        if "elements" in self.conditions:
            z = cond.elements.clamp(0, MAX_Z)
            z = torch.where(cond.elements_dropped[:, None], self.element_null, z)
            tokens = self.element_embed(z) + self.element_slot(slots)[None]
            out = out + self.element_mlp(tokens.reshape(b, -1))
        if "band_gap" in self.conditions:
            missing = torch.isnan(cond.band_gap)
            # Zero the NaNs *before* the MLP: NaN·0 in the backward pass would poison the
            # weight gradients even though those samples are masked out below.
            x = torch.where(missing, 0.0, cond.band_gap.float()) / self.band_gap_scale
            args = x[:, None] * self.band_gap_freqs[None]
            feats = torch.cat([torch.sin(args), torch.cos(args), x[:, None]], dim=-1)
            value = self.band_gap_mlp(feats)
            out = out + torch.where(missing[:, None], self.band_gap_null[None], value)
        if "magnetic" in self.conditions:
            m = torch.where(cond.magnetic < 0, self.magnetic_null, cond.magnetic)
            out = out + self.magnetic_embed(m.clamp(max=self.magnetic_null))
        if "formula" in self.conditions:
            missing = (cond.formula < 0).all(dim=-1)
            counts = cond.formula.clamp(0, MAX_ATOMS)
            counts = torch.where(missing[:, None], self.formula_null, counts)
            tokens = self.count_embed(counts) + self.formula_slot(slots)[None]
            out = out + self.formula_mlp(tokens.reshape(b, -1))
        if "stability" in self.conditions:
            s = torch.where(cond.stability < 0, self.stability_null, cond.stability)
            out = out + self.stability_embed(s.clamp(max=self.stability_null))
        return out

    def null_gradients(self) -> dict[str, torch.Tensor | None]:
        """Gradient of each learned null vector after a backward pass (None = no gradient).

        Lets tests and training diagnostics check that classifier-free guidance really trains
        the unconditional branch.
        """
        sources = {
            "elements": ("element_embed", "element_null"),
            "magnetic": ("magnetic_embed", "magnetic_null"),
            "formula": ("count_embed", "formula_null"),
            "stability": ("stability_embed", "stability_null"),
        }
        grads: dict[str, torch.Tensor | None] = {}
        for name in self.conditions:
            if name == "band_gap":
                grads[name] = self.band_gap_null.grad
                continue
            module, index = sources[name]
            weight_grad = getattr(self, module).weight.grad
            grads[name] = None if weight_grad is None else weight_grad[getattr(self, index)]
        return grads
