"""The periodic atom denoiser: message passing over every pair of atoms in a cell (torch only).

Inputs are what is invariant: the fractional difference f_j − f_i mod 1 of every pair (as
Fourier features), the minimum-image distance it implies in the current lattice (radial basis),
the lattice's Gram matrix LLᵀ, atom types (an element or the mask token), the timestep and the
crystal-level conditions. So the outputs are periodic, do not depend on the atoms' order or the
cell's orientation, and the lattice output ε̂ = M·L turns with the cell.

Dense over ≤ 16 atoms with a mask: a batch is (B, N) atoms, (B, N, N) pairs; no scatter kernels,
which keeps it a plain PyTorch model that runs anywhere. The first linear map of each message
is split into a per-atom part for i, one for j and one for the pair, so the quadratic cost per
pair is one H×H product (CSPNet's layer, Jiao et al. 2023, arranged for dense CPU batches).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from pccd.model.embeddings import sinusoidal_embedding

MASK_TOKEN = 0
"""Type id of a masked atom (atomic numbers start at 1)."""
NUM_TOKENS = 119
"""Type vocabulary: the mask token and Z = 1..118."""


@dataclass(frozen=True)
class AtomDenoiserConfig:
    """Constructor arguments of :class:`AtomDenoiser`, saved beside the weights."""

    hidden: int = 128
    layers: int = 4
    fourier: int = 8
    """Frequencies k = 1..fourier of sin/cos 2πk·Δf per axis."""
    rbf: int = 16
    """Gaussian radial basis functions of the minimum-image pair distance over 0..rbf_max Å."""
    rbf_max: float = 8.0
    volume_per_atom: float = 19.0
    """v0 in Å³: lattices enter scaled by (N·v0)^(1/3); this restores Å for the distances."""

    def to_dict(self) -> dict:
        return asdict(self)


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_out))


class MessageLayer(nn.Module):
    """h_i ← h_i + φ([LN(h_i), mean_j ψ(h_i, h_j, e_ij)]) over the atoms j of the same cell."""

    def __init__(self, hidden: int, pair_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.src = nn.Linear(hidden, hidden)
        self.dst = nn.Linear(hidden, hidden, bias=False)
        self.pair = nn.Linear(pair_dim, hidden, bias=False)
        self.message = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.update = _mlp(2 * hidden, hidden, hidden)

    def forward(self, h: torch.Tensor, pair: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        x = self.norm(h)
        m = self.src(x)[:, :, None] + self.dst(x)[:, None, :] + self.pair(pair)
        m = self.message(m) * pair_mask[..., None]
        agg = m.sum(2) / pair_mask.sum(2, keepdim=True).clamp(min=1)
        return h + self.update(torch.cat([x, agg], dim=-1))


class ConditionEmbedding(nn.Module):
    """Crystal-level conditions (band gap, stability) as one vector, with learned nulls.

    A missing value (NaN gap, stability −1) takes its condition's null vector, which is also
    what classifier-free guidance uses for the unconditional branch, so a sample is never told
    "0 eV" when nothing was asked.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.band_gap = _mlp(2, hidden, hidden)
        self.band_gap_null = nn.Parameter(torch.zeros(hidden))
        self.stability = nn.Embedding(3, hidden)  # 0 unstable, 1 stable, 2 null

    def forward(
        self,
        batch: int,
        band_gap: torch.Tensor | None,
        stability: torch.Tensor | None,
        device: torch.device,
    ) -> torch.Tensor:
        if band_gap is None:
            band_gap = torch.full((batch,), float("nan"), device=device)
        if stability is None:
            stability = torch.full((batch,), -1, dtype=torch.long, device=device)
        missing = torch.isnan(band_gap)
        gap = torch.nan_to_num(band_gap, nan=0.0)
        feats = torch.stack([torch.log1p(gap), (gap >= 0.1).float()], dim=-1)
        feats = feats.to(self.band_gap_null.dtype)
        gap_emb = torch.where(missing[:, None], self.band_gap_null, self.band_gap(feats))
        stab = torch.where(stability < 0, torch.full_like(stability, 2), stability)
        return gap_emb + self.stability(stab)


class AtomDenoiser(nn.Module):
    """ε̂ / score / type logits for a noisy batch of cells.

    forward(types, frac, lattice, mask, t, slots, cond) returns
    ``(coord_score (B,N,3), lattice_eps (B,3,3), type_logits (B,N,3))`` where the type logits
    are over the crystal's own element slots (empty slots at −inf).
    """

    def __init__(self, config: AtomDenoiserConfig = AtomDenoiserConfig()):
        super().__init__()
        self.config = config
        h = config.hidden
        self.type_embedding = nn.Embedding(NUM_TOKENS, h)
        self.time_mlp = _mlp(h, h, h)
        self.conditions = ConditionEmbedding(h)
        self.global_mlp = _mlp(3 * h + 1, h, h)
        pair_dim = 6 * config.fourier + config.rbf + 9
        self.layers = nn.ModuleList(MessageLayer(h, pair_dim) for _ in range(config.layers))
        self.out_norm = nn.LayerNorm(h)
        self.coord_head = _mlp(h, h, 3)
        self.lattice_head = _mlp(h, h, 9)
        self.type_head = nn.Linear(h, h)
        freqs = torch.arange(1, config.fourier + 1, dtype=torch.float32)
        self.register_buffer("freqs", 2 * math.pi * freqs, persistent=False)
        centres = torch.linspace(0.0, config.rbf_max, config.rbf)
        self.register_buffer("centres", centres, persistent=False)

    def pair_features(
        self, frac: torch.Tensor, lattice: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, N, N, pair_dim): Fourier features of Δf, RBF of the minimum-image distance,
        and the Gram matrix of the lattice (scaled back to Å-like size)."""
        n_atoms = mask.sum(1).clamp(min=1).to(frac.dtype)
        scale = (n_atoms * self.config.volume_per_atom) ** (1 / 3)
        lat = lattice * scale.view(-1, 1, 1)  # Å
        diff = frac[:, None, :, :] - frac[:, :, None, :]  # f_j − f_i
        angle = diff[..., None] * self.freqs  # (B, N, N, 3, K)
        fourier = torch.cat([angle.sin(), angle.cos()], dim=-1).flatten(-2)
        nearest = diff - torch.round(diff)
        dist = torch.linalg.vector_norm(nearest @ lat[:, None], dim=-1)  # (B, N, N)
        width = self.config.rbf_max / self.config.rbf
        rbf = torch.exp(-(((dist[..., None] - self.centres) / width) ** 2))
        gram = (lat @ lat.transpose(1, 2)).flatten(1) / scale.view(-1, 1) ** 2
        gram = gram[:, None, None, :].expand(*dist.shape, 9)
        return torch.cat([fourier, rbf, gram], dim=-1)

    def forward(
        self,
        types: torch.Tensor,
        frac: torch.Tensor,
        lattice: torch.Tensor,
        mask: torch.Tensor,
        t: torch.Tensor,
        slots: torch.Tensor,
        band_gap: torch.Tensor | None = None,
        stability: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """See the class docstring; ``slots`` (B, 3) are the element list (Z, 0 = empty);
        ``band_gap`` (B,) eV, NaN = not given; ``stability`` (B,) 0/1, −1 = not given."""
        hdim = self.config.hidden
        maskf = mask.to(frac.dtype)
        present = (slots > 0).to(frac.dtype)
        slot_emb = self.type_embedding(slots) * present[..., None]
        elements = slot_emb.sum(1) / present.sum(1, keepdim=True).clamp(min=1)
        n_atoms = maskf.sum(1, keepdim=True)
        time = self.time_mlp(sinusoidal_embedding(t.float(), hdim).to(frac.dtype))
        cond = self.conditions(len(t), band_gap, stability, t.device)
        g = self.global_mlp(torch.cat([time, elements, cond, n_atoms / 16], dim=-1))
        h = self.type_embedding(types) + g[:, None, :]
        pair = self.pair_features(frac, lattice, mask)
        pair_mask = maskf[:, :, None] * maskf[:, None, :]
        for layer in self.layers:
            h = layer(h, pair, pair_mask)
        h = self.out_norm(h) * maskf[..., None]
        score = self.coord_head(h) * maskf[..., None]
        pooled = h.sum(1) / n_atoms.clamp(min=1)
        eps_lattice = self.lattice_head(pooled).view(-1, 3, 3) @ lattice
        logits = torch.einsum("bnh,bkh->bnk", self.type_head(h), slot_emb) / math.sqrt(hdim)
        logits = logits.masked_fill((slots == 0)[:, None, :], float("-inf"))
        return score, eps_lattice, logits
