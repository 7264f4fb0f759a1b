"""Attention among atoms: each atom's block of rows pooled into one token (formula known).

Why: the raw samples' geometry fails atom by atom. Each atom gets a too-close neighbour with
a ~25–35% chance whatever the cell size, and given the true lattice and elements the shipped
network places atoms no better than uniformly random positions do (BENCHMARKS, issue 11). The
convolutions and row attention of the U-Net see rows; an atom is a block of ~128/N identical
rows whose position the network can only read by averaging noisy rows it has to find itself.
When the formula is given, the blocks are known exactly (the ``spread`` layout of
:func:`pccd.representation.row_blocks`), so this layer

* averages the features and the periodic coordinate features of every block into one token
  per atom (block means are ~√(128/N) times less noisy than rows);
* lets the atom tokens attend to each other, with attention biases and messages computed from
  the periodic differences of their coordinates — cos/sin of 2πk·Δfrac, k = 1, 2, per axis, the pair
  features of point-cloud crystal denoisers such as DiffCSP (Jiao et al. 2023) — and from the
  noisy lattice rows, so distances in the cell can enter;
* adds each token's update back to all rows of its block.

Samples without a formula (missing, or dropped for classifier-free guidance) pass unchanged.
The output projection starts at zero, so a new layer is the identity (warm starts keep the
network they start from).

Measured (BENCHMARKS, memorisation test, 2,500 steps at lr 5e-4): two layers learn faster at
first but end behind the plain network, and reproduce fewer of their own crystals from their
formulas (30.9% vs 52.0%); hence off by default (``UNetConfig.atom_attention = 0``).

This module is torch only (the model package does not import the crystal code); the block
boundaries are computed here exactly as :func:`pccd.representation.row_blocks` computes them,
which a test checks for every atom count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pccd.model.layers import PERIODIC_FEATURES, periodic_row_features

MAX_ATOMS = 16
"""Atoms per cell the representation holds (the token count)."""
PAIR_INPUTS = PERIODIC_FEATURES + 6
"""Per atom pair: cos/sin of Δ and 2Δ per axis (12), and the noisy lattice rows' means (6)."""


def spread_labels(n_atoms: torch.Tensor, rows: int) -> torch.Tensor:
    """(B, rows) atom index of each row for (B,) atom counts ≥ 1, in the ``spread`` layout.

    Block ``k`` starts at ``floor(k · rows / N + 0.5)`` in float64, as the encoder does.
    """
    k = torch.arange(1, MAX_ATOMS, device=n_atoms.device, dtype=torch.float64)
    n = n_atoms.to(torch.float64)[:, None]
    starts = torch.floor(k * rows / n + 0.5)  # (B, 15): starts of atoms 1..15
    starts = torch.where(k < n, starts, torch.full_like(starts, float("inf")))
    r = torch.arange(rows, device=n_atoms.device, dtype=torch.float64)
    return (r[None, :, None] >= starts[:, None, :]).sum(dim=-1)


def _pair_inputs(u: torch.Tensor, lattice: torch.Tensor) -> torch.Tensor:
    """(B, A, A, 18) pair features from block-mean periodic features u (B, A, 12) and the
    (B, 6) lattice means: cos(θ_i − θ_j) and sin(θ_i − θ_j) for both harmonics and axes."""
    cos, sin = torch.cat([u[..., 0:3], u[..., 6:9]], -1), torch.cat([u[..., 3:6], u[..., 9:12]], -1)
    c_i, c_j, s_i, s_j = cos[:, :, None], cos[:, None], sin[:, :, None], sin[:, None]
    a = u.shape[1]
    lat = lattice[:, None, None].expand(-1, a, a, -1)
    return torch.cat([c_i * c_j + s_i * s_j, s_i * c_j - c_i * s_j, lat], dim=-1)


class _AtomLayer(nn.Module):
    """Pre-norm transformer layer over atom tokens with pair biases and pair messages."""

    def __init__(self, channels: int, heads: int, head_dim: int, pair_hidden: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.norm1 = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * inner, bias=False)
        self.out = nn.Linear(inner, channels)
        # pair features enter twice, as in message passing: as a bias of the attention logit
        # and as part of the message, so what an atom receives depends on where the sender
        # sits relative to it, not only on who the sender is
        self.pair = nn.Sequential(nn.Linear(PAIR_INPUTS, pair_hidden), nn.SiLU())
        self.pair_bias = nn.Linear(pair_hidden, heads)
        self.pair_value = nn.Linear(pair_hidden, inner)
        self.norm2 = nn.LayerNorm(channels)
        self.ffn = nn.Sequential(
            nn.Linear(channels, 2 * channels), nn.SiLU(), nn.Linear(2 * channels, channels)
        )

    def forward(self, t: torch.Tensor, pairs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, a, _ = t.shape
        q, k, v = self.qkv(self.norm1(t)).view(b, a, 3, self.heads, self.head_dim).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # (B, heads, A, d)
        logits = torch.matmul(q, k.transpose(-1, -2)) * self.head_dim**-0.5
        hidden = self.pair(pairs)  # (B, A, A, hidden)
        logits = logits + self.pair_bias(hidden).permute(0, 3, 1, 2)
        logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
        weights = torch.softmax(logits, dim=-1)  # (B, heads, A, A)
        edge = self.pair_value(hidden).view(b, a, a, self.heads, self.head_dim)
        o = torch.matmul(weights, v) + torch.einsum("bhij,bijhd->bhid", weights, edge)
        o = o.transpose(1, 2).reshape(b, a, -1)
        t = t + self.out(o)
        return t + self.ffn(self.norm2(t))


class AtomAttention(nn.Module):
    """Atom tokens from row blocks, ``layers`` transformer layers among them, updates back to
    the rows (see the module docstring). Works on ``seq1d`` features (B, C, 128)."""

    def __init__(
        self, channels: int, layers: int, heads: int = 4, head_dim: int = 32, pair_hidden: int = 64
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [_AtomLayer(channels, heads, head_dim, pair_hidden) for _ in range(layers)]
        )
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, h: torch.Tensor, x: torch.Tensor, formula: torch.Tensor) -> torch.Tensor:
        """``h`` (B, C, rows) features at full row resolution, ``x`` (B, 3, rows, 3) the noisy
        array, ``formula`` (B, 3) atoms per slot (all −1 = unknown: the sample is skipped)."""
        n_atoms = torch.where(formula < 0, 0, formula).sum(dim=-1)
        known = n_atoms > 0
        if not bool(known.any()):
            return h
        rows = h.shape[-1]
        labels = spread_labels(n_atoms.clamp(min=1), rows)
        member = F.one_hot(labels, MAX_ATOMS).to(h.dtype)  # (B, rows, A)
        size = member.sum(dim=1).clamp(min=1.0)[..., None]  # (B, A, 1)
        tokens = torch.matmul(member.transpose(1, 2), h.transpose(1, 2)) / size
        u = torch.matmul(member.transpose(1, 2), periodic_row_features(x).to(h.dtype)) / size
        lattice = torch.stack(
            [x[:, 2, : rows // 2].mean(dim=1), x[:, 2, rows // 2 :].mean(dim=1)], dim=1
        ).reshape(x.shape[0], 6)
        pairs = _pair_inputs(u, lattice.to(h.dtype))
        mask = torch.arange(MAX_ATOMS, device=h.device)[None] < n_atoms.clamp(min=1)[:, None]
        t = tokens
        for layer in self.layers:
            t = layer(t, pairs, mask)
        update = torch.matmul(member, self.proj_out(t - tokens))  # (B, rows, C)
        return h + update.transpose(1, 2) * known[:, None, None].to(h.dtype)
