"""The periodic atom denoiser: message passing over every pair of atoms in a cell (torch only).

Inputs are what is invariant: the fractional difference f_j − f_i mod 1 of every pair (as
Fourier features), the minimum-image distance it implies in the current lattice (radial basis),
the lattice's Gram matrix LLᵀ, atom types (an element or the mask token), the timestep and the
crystal-level conditions. So the outputs are periodic, do not depend on the atoms' order or the
cell's orientation, and the lattice output ε̂ = M·L turns with the cell.

A batch comes in dense, (B, N) atoms with a mask, and is computed packed: the network sees only
the real atoms (A of them) and the real pairs of each cell (P = Σ Nᵢ²), gathered with plain
indexing and summed back with ``index_add``, so a batch of cells of mixed size pays for no
padding (dense padding cost a third more pair work on de novo batches, BENCHMARKS.md) and
every cell of a request can share one network call. No compiled scatter extension is needed.
The first linear map of each message is split into a per-atom part for i, one for j and one
for the pair, so the quadratic cost per pair is one H×H product (CSPNet's layer, Jiao et al.
2023).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
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


def _segment_mean(
    x: torch.Tensor, index: torch.Tensor, size: int, counts: torch.Tensor
) -> torch.Tensor:
    """Rows of ``x`` summed into ``size`` segments by ``index``, divided by ``counts``."""
    total = x.new_zeros((size, *x.shape[1:])).index_add_(0, index, x)
    return total / counts.to(x.dtype).view(-1, *[1] * (x.dim() - 1))


@dataclass(frozen=True)
class Packing:
    """Where the real atoms and pairs of a dense (B, N) batch sit in flat arrays.

    Pairs are every ordered (i, j) of the same cell, i = j included, sorted by cell then i,
    which is what the dense model summed over.
    """

    cell: torch.Tensor
    """(A,) the cell of each atom."""
    row: torch.Tensor
    """(A,) its position in its cell's row of the dense batch."""
    src: torch.Tensor
    """(P,) the atom i of each pair (the one that receives the message)."""
    dst: torch.Tensor
    """(P,) the atom j."""
    counts: torch.Tensor
    """(B,) atoms per cell."""
    pair_cell: torch.Tensor
    """(P,) the cell of each pair."""
    incoming: torch.Tensor
    """(A,) messages each atom receives: its cell's atom count (indexed once here, not in
    every message layer)."""

    @classmethod
    def of(cls, mask: torch.Tensor) -> Packing:
        cell, row = mask.nonzero(as_tuple=True)
        index = torch.full(mask.shape, -1, dtype=torch.long, device=mask.device)
        index[cell, row] = torch.arange(len(cell), device=mask.device)
        pair_cell, i, j = (mask[:, :, None] & mask[:, None, :]).nonzero(as_tuple=True)
        counts = mask.sum(1)
        return cls(
            cell, row, index[pair_cell, i], index[pair_cell, j], counts, pair_cell, counts[cell]
        )

    def cell_mean(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) mean over each cell's atoms of per-atom ``x`` (A, ...)."""
        return _segment_mean(x, self.cell, len(self.counts), self.counts.clamp(min=1))

    def message_mean(self, m: torch.Tensor) -> torch.Tensor:
        """(A, ...) mean over each atom's incoming pairs of per-pair ``m`` (P, ...): an atom
        receives one message from every atom of its cell, itself included."""
        return _segment_mean(m, self.src, len(self.cell), self.incoming)

    def dense(self, x: torch.Tensor, width: int) -> torch.Tensor:
        """Per-atom ``x`` (A, ...) as (B, width, ...), zeros where there is no atom."""
        out = x.new_zeros((len(self.counts), width, *x.shape[1:]))
        out[self.cell, self.row] = x
        return out


class MessageLayer(nn.Module):
    """h_i ← h_i + φ([LN(h_i), mean_j ψ(h_i, h_j, e_ij)]) over the atoms j of the same cell.

    :attr:`pair` projects the pair features ``[pair, gram]``; the Gram matrix is the same for
    every pair of a cell, so its part of the projection is computed once per cell and added
    per atom, rather than per pair.
    """

    def __init__(self, hidden: int, pair_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.src = nn.Linear(hidden, hidden)
        self.dst = nn.Linear(hidden, hidden, bias=False)
        self.pair = nn.Linear(pair_dim, hidden, bias=False)
        self.message = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.update = _mlp(2 * hidden, hidden, hidden)

    def forward(
        self, h: torch.Tensor, pair: torch.Tensor, gram: torch.Tensor, packing: Packing
    ) -> torch.Tensor:
        """``h`` (A, H) packed atoms; ``pair`` (P, F) and ``gram`` (B, 9) from
        :meth:`AtomDenoiser.pair_features`."""
        x = self.norm(h)
        k = pair.shape[-1]
        weight = self.pair.weight
        node = self.src(x) + (gram @ weight[:, k:].T)[packing.cell]
        pre = torch.addmm(node[packing.src] + self.dst(x)[packing.dst], pair, weight[:, :k].T)
        # in place when nothing is kept for a backward pass: one (P, H) buffer fewer per step
        inplace = not torch.is_grad_enabled()
        linear = self.message[1]  # message = SiLU, Linear, SiLU, applied here
        m = F.silu(linear(F.silu(pre, inplace=inplace)), inplace=inplace)
        agg = packing.message_mean(m).to(x.dtype)  # m may be bf16
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
        self, frac: torch.Tensor, lattice: torch.Tensor, packing: Packing
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(P, 6·fourier + rbf) per-pair features — Fourier features of Δf and an RBF of the
        minimum-image distance — and (B, 9) per cell: the Gram matrix of the lattice (scaled
        back to Å-like size). Together they are the ``pair_dim`` inputs of each layer's pair
        projection; the Gram part is kept per cell because it is the same for every pair of a
        cell, which saves building and projecting a (P, 9) copy."""
        scale = (packing.counts.clamp(min=1).to(frac.dtype) * self.config.volume_per_atom) ** (
            1 / 3
        )
        lat = lattice * scale.view(-1, 1, 1)  # Å
        atoms = frac[packing.cell, packing.row]  # (A, 3)
        diff = atoms[packing.dst] - atoms[packing.src]  # f_j − f_i
        angle = diff[..., None] * self.freqs  # (P, 3, K)
        fourier = torch.cat([angle.sin(), angle.cos()], dim=-1).flatten(-2)
        nearest = diff - torch.round(diff)
        cart = torch.einsum("pk,pkl->pl", nearest, lat[packing.pair_cell])
        dist = torch.linalg.vector_norm(cart, dim=-1)  # (P,)
        width = self.config.rbf_max / self.config.rbf
        rbf = torch.exp(-(((dist[..., None] - self.centres) / width) ** 2))
        gram = (lat @ lat.transpose(1, 2)).flatten(1) / scale.view(-1, 1) ** 2
        return torch.cat([fourier, rbf], dim=-1), gram

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
        packing = Packing.of(mask)
        present = (slots > 0).to(frac.dtype)
        slot_emb = self.type_embedding(slots) * present[..., None]
        elements = slot_emb.sum(1) / present.sum(1, keepdim=True).clamp(min=1)
        n_atoms = packing.counts.to(frac.dtype)[:, None]
        time = self.time_mlp(sinusoidal_embedding(t.float(), hdim).to(frac.dtype))
        cond = self.conditions(len(t), band_gap, stability, t.device)
        g = self.global_mlp(torch.cat([time, elements, cond, n_atoms / 16], dim=-1))
        h = self.type_embedding(types[packing.cell, packing.row]) + g[packing.cell]
        pair, gram = self.pair_features(frac, lattice, packing)
        for layer in self.layers:
            h = layer(h, pair, gram, packing)
        h = self.out_norm(h)
        width = mask.shape[1]
        score = packing.dense(self.coord_head(h), width)
        eps_lattice = self.lattice_head(packing.cell_mean(h)).view(-1, 3, 3) @ lattice
        logits = torch.einsum("ah,akh->ak", self.type_head(h), slot_emb[packing.cell])
        logits = packing.dense(logits / math.sqrt(hdim), width)
        logits = logits.masked_fill((slots == 0)[:, None, :], float("-inf"))
        return score, eps_lattice, logits
