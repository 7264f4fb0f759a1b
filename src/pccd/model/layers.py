"""Building blocks of the PCCD U-Net, written once for both array layouts.

The network sees a crystal either as a 2-D "image" (channels × 128 rows × 3 columns, layout
``grid2d``, the paper's choice) or as a 1-D sequence of 128 rows with 9 channels (layout
``seq1d``, our CPU default). Every block here is layout-agnostic: it takes ``spatial_dims``
(2 or 1) and works on tensors ``(B, C, *spatial)``. Resolution changes always act on the rows
only: the 3 columns are x/y/z (channel 0), element slots (channel 1) or lattice parameters
(channel 2), which are not a spatial axis that could be pooled.

All attention is written with explicit matmuls (not ``scaled_dot_product_attention``) because
:class:`torch.utils.flop_counter.FlopCounterMode` does not count the CPU fused kernel, and the
FLOP budget of the presets is part of their specification.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

PERIODIC_FEATURES = 12
"""Periodic features per row: cos/sin of 2π·frac and 4π·frac, 3 axes."""


def periodic_row_features(x: torch.Tensor) -> torch.Tensor:
    """(B, rows, 12) cos/sin of 2π·frac and 4π·frac of every row of channel 0 of ``x``
    (B, 3, rows, 3), which holds 2·frac − 1: what pair biases compare between positions."""
    angle = torch.pi * (x[:, 0] + 1.0)
    return torch.cat(
        [torch.cos(angle), torch.sin(angle), torch.cos(2 * angle), torch.sin(2 * angle)], dim=-1
    )


def conv(spatial_dims: int, c_in: int, c_out: int, kernel: int, bias: bool = True) -> nn.Module:
    """Same-size convolution (odd ``kernel``) in 1-D or 2-D (square kernel)."""
    cls = nn.Conv2d if spatial_dims == 2 else nn.Conv1d
    return cls(c_in, c_out, kernel, padding=kernel // 2, bias=bias)


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with at most ``groups`` groups that divide ``channels``.

    Falling back to a divisor keeps tiny test models (e.g. 12 channels) constructible with the
    same config field that the big presets use.
    """
    g = math.gcd(channels, groups)
    return nn.GroupNorm(g, channels)


class Downsample(nn.Module):
    """Halve the rows (never the columns) with a strided convolution.

    2-D: kernel (4, 3), stride (2, 1), padding (1, 1) — the paper's row-only downsampling;
    1-D: kernel 4, stride 2, padding 1, the same operation on the sequence view.
    """

    def __init__(self, spatial_dims: int, c_in: int, c_out: int) -> None:
        super().__init__()
        if spatial_dims == 2:
            self.op = nn.Conv2d(c_in, c_out, (4, 3), stride=(2, 1), padding=(1, 1))
        else:
            self.op = nn.Conv1d(c_in, c_out, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double the rows (never the columns).

    ``mode="nearest"``: nearest-neighbour row repeat then a 3-wide convolution (no
    checkerboard artefacts); ``mode="transpose"``: the transposed counterpart of
    :class:`Downsample` (kernel (4, 3), stride (2, 1)).
    """

    def __init__(self, spatial_dims: int, c_in: int, c_out: int, mode: str = "nearest") -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.mode = mode
        if mode == "nearest":
            self.op = conv(spatial_dims, c_in, c_out, 3)
        elif mode == "transpose":
            if spatial_dims == 2:
                self.op = nn.ConvTranspose2d(c_in, c_out, (4, 3), stride=(2, 1), padding=(1, 1))
            else:
                self.op = nn.ConvTranspose1d(c_in, c_out, 4, stride=2, padding=1)
        else:
            raise ValueError(f"unknown upsample mode {mode!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "nearest":
            scale = (2.0, 1.0) if self.spatial_dims == 2 else 2.0
            x = F.interpolate(x, scale_factor=scale, mode="nearest")
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block with FiLM conditioning on the (time + condition) embedding.

    ``GN → SiLU → conv → GN → ×(1+scale)+shift → SiLU → dropout → conv`` plus a (1×1-projected)
    skip. The embedding modulates *every* block, so the conditions can steer features at all
    resolutions; ``1 + scale`` keeps a freshly initialised block close to an unconditioned one.
    """

    def __init__(
        self,
        spatial_dims: int,
        c_in: int,
        c_out: int,
        emb_dim: int,
        groups: int = 8,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = group_norm(c_in, groups)
        self.conv1 = conv(spatial_dims, c_in, c_out, 3)
        self.emb_proj = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = group_norm(c_out, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(spatial_dims, c_out, c_out, 3)
        self.skip = conv(spatial_dims, c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(F.silu(emb)).chunk(2, dim=1)
        extra = (1,) * (h.dim() - 2)
        h = self.norm2(h) * (1 + scale.view(*scale.shape, *extra)) + shift.view(
            *shift.shape, *extra
        )
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.skip(x)


class Attention(nn.Module):
    """Pre-norm multi-head self-attention over all positions, with a residual connection.

    ``kind="full"``: softmax attention, cost quadratic in the number of positions — used where
    the array is small (the middle, 8–16 rows). ``kind="linear"``: the efficient attention of
    Shen et al. (2021) — softmax of queries over features and of keys over positions, so the
    keys/values are summarised into a (d × d) context per head and the cost is linear in the
    positions; this is what the paper's U-Net uses at every level.
    """

    def __init__(
        self,
        channels: int,
        kind: str,
        heads: int = 4,
        head_dim: int = 32,
        groups: int = 8,
        pair_dim: int = 0,
    ) -> None:
        super().__init__()
        if kind not in ("full", "linear"):
            raise ValueError(f"unknown attention kind {kind!r}")
        if pair_dim and kind != "full":
            raise ValueError("pair biases need full attention")
        self.kind = kind
        self.heads = heads
        self.head_dim = head_dim
        inner = heads * head_dim
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Linear(channels, 3 * inner, bias=False)
        self.out = nn.Linear(inner, channels)
        # per head a bilinear form of the positions' periodic features: the logit of (i, j)
        # gains u_iᵀ M_h u_j, e.g. cos 2π(x_i − x_j); zero at start (plain attention)
        self.pair = nn.Parameter(torch.zeros(heads, pair_dim, pair_dim)) if pair_dim else None

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        """``pos`` (B, positions, pair_dim): per-position features for the pair biases."""
        b, c, *spatial = x.shape
        n = math.prod(spatial)
        h = self.norm(x).reshape(b, c, n).transpose(1, 2)  # (B, N, C)
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # q, k, v: (B, heads, N, d)
        scale = self.head_dim**-0.5
        if self.kind == "full":
            logits = torch.matmul(q, k.transpose(-1, -2)) * scale
            if self.pair is not None and pos is not None:
                left = torch.einsum("bnd,hde->bhne", pos, self.pair)
                logits = logits + torch.matmul(left, pos.transpose(1, 2)[:, None])
            weights = torch.softmax(logits, dim=-1)
            o = torch.matmul(weights, v)
        else:
            q = torch.softmax(q, dim=-1) * scale
            k = torch.softmax(k, dim=-2)
            context = torch.matmul(k.transpose(-1, -2), v)  # (B, heads, d, d)
            o = torch.matmul(q, context)
        o = o.transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        o = self.out(o).transpose(1, 2).reshape(b, c, *spatial)
        return x + o
