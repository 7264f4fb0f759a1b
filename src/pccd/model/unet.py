"""The PCCD denoiser: a conditional U-Net ε_θ(x_t, t, c) on 3 × 128 × 3 crystal arrays.

Architecture (Li et al., arXiv 2401.13192, following the DDPM U-Net family): a stem convolution,
an encoder of resolution *levels* (residual blocks with FiLM conditioning, optional attention,
then a transition that halves the rows and widens the channels), a middle (residual blocks
with attention between them), a mirrored decoder that concatenates the encoder's skip
activations, and a final residual block + 1×1 projection to the predicted noise.

Level ``i`` runs at ``rows / 2**i`` rows. Its blocks work at the width of the level before it
(``base_channels`` for level 0) and its transition widens to ``base_channels * channel_mults[i]``
— for the last level a same-resolution convolution, so the middle runs at the last level's
rows. With the paper's ``(1, 2, 4, 8, 16)`` and base 64 that is 128 → 64 → 32 → 16 → 8 rows,
widths 64…1024, 1024 in the middle (where the authors' network has three residual blocks).

Every deviation from the paper is a named :class:`UNetConfig` option, so the shipped CPU model
and a paper-scale model are the same code and can be trained and compared:

* ``layout`` — ``"grid2d"``: the array is an image (3 channels, 128 × 3), Conv2d 3×3 (paper);
  ``"seq1d"``: a sequence of 128 rows with 9 channels, Conv1d k=3. At equal width this is 9×
  cheaper (a third of the positions, a third of the taps) and loses little: the 3 columns
  are x/y/z, slots or lattice parameters, not a spatial axis, and as channels they are mixed
  by every convolution instead of only by a 3-wide kernel with zero padding.
* ``channel_mults`` / ``base_channels`` / ``num_res_blocks`` — depth and width.
* ``attention`` + ``attention_levels`` — per-level attention kind (paper: linear at every
  level), ``mid_attention`` (paper: full) and ``mid_blocks`` (paper: 3).
* ``upsample`` — nearest + conv or transposed conv.
* ``conditions`` — which conditions the model embeds.
* ``self_condition`` — self-conditioning (Chen et al. 2023, "Analog Bits"): the network also
  sees its own previous estimate of the clean array, so each step refines a whole-crystal
  guess instead of starting over from the noisy array.
* ``pair_bias`` — every full attention adds a learned bilinear bias of the positions'
  periodic coordinate features (cos/sin of 2π·frac and 4π·frac of the noisy rows, averaged
  over the rows a position summarises), so attention can weigh rows by how far apart their
  atoms sit on the torus — the pairwise geometry a point-cloud network would see directly.
* ``atom_attention`` — when the formula is given, pool every atom's block of rows into one
  token and run this many transformer layers among the atoms, with pair biases from their
  periodic coordinate differences, at full row resolution in the encoder and the decoder
  (:mod:`pccd.model.atoms`); samples without a formula skip it.
* ``periodic_features`` — also feed the network cos/sin(2π·frac) of the noisy fractional
  coordinates, so it sees that 0.99 and 0.01 are neighbours (the Euclidean array alone puts
  them 1.96 apart); the diffusion itself is unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pccd.conditioning import CONDITION_NAMES, MAX_SLOTS, Conditions
from pccd.errors import InputError
from pccd.model.atoms import AtomAttention
from pccd.model.embeddings import ConditionEncoder, TimeEmbedding
from pccd.model.layers import (
    PERIODIC_FEATURES,
    Attention,
    Downsample,
    ResBlock,
    Upsample,
    conv,
    group_norm,
    periodic_row_features,
)

CHANNELS = 3
"""Channels of the crystal array (coordinates, element one-hot, lattice)."""
ROWS = 128
"""Rows (points) of the crystal array."""
COLUMNS = 3
"""Columns of the crystal array."""

LAYOUTS = ("grid2d", "seq1d")
ATTENTION_KINDS = ("linear", "full", "none")
UPSAMPLE_MODES = ("nearest", "transpose")

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pt"
WEIGHTS_DTYPES = {"float32": torch.float32, "float16": torch.float16}
"""Storage precisions of ``model.pt`` (``config.json`` key ``weights_dtype``; absent = float32).
Loading always computes in float32: float16 arithmetic on CPUs is slow."""


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of :class:`PCCDUNet`; every field is JSON-serialisable.

    Attributes:
        layout: ``"grid2d"`` (Conv2d over 128 × 3, paper) or ``"seq1d"`` (Conv1d over 128 rows,
            9 channels).
        base_channels: width of the stem and of level 0's blocks.
        channel_mults: width multiplier reached by each level's transition; one entry per level.
        num_res_blocks: residual blocks per level (encoder and decoder each).
        attention: attention kind in the levels: ``"linear"``, ``"full"`` or ``"none"``.
        attention_levels: indices of the levels that get attention; ``None`` = all levels.
        mid_attention: attention kind in the middle block.
        mid_blocks: residual blocks in the middle, with an attention between consecutive ones.
        attention_heads / attention_head_dim: heads and per-head width of every attention.
        norm_groups: GroupNorm groups (reduced to a divisor of the width when needed).
        time_embed_mult: embedding width = ``base_channels * time_embed_mult``.
        token_dim: width of the per-slot element / formula tokens in the condition encoder.
        conditions: conditions the model embeds (subset of ``CONDITION_NAMES``; default all).
            Saved configs list them explicitly, so a model saved before a condition was added
            (e.g. the shipped ``pccd-cpu``, without ``stability``) loads without it.
        band_gap_frequencies / band_gap_scale: Fourier features of ``gap / scale`` (eV).
        stem_kernel: kernel size of the first convolution (odd).
        upsample: ``"nearest"`` (repeat rows + conv 3) or ``"transpose"`` (transposed conv).
        dropout: dropout inside residual blocks.
        periodic_features: add cos/sin(2π·frac) of channel 0 as extra input channels.
        self_condition: take the previous clean-array estimate as 3 extra array channels.
        pair_bias: periodic pair biases in every full attention (``seq1d`` only).
        atom_attention: transformer layers among atom tokens at level 0, encoder and decoder
            (0 = off, the paper; ``seq1d`` only; used where the formula is given).
    """

    layout: str = "seq1d"
    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 1, 2, 2, 3)
    num_res_blocks: int = 2
    attention: str = "full"
    attention_levels: tuple[int, ...] | None = (3, 4)
    mid_attention: str = "full"
    mid_blocks: int = 2
    attention_heads: int = 4
    attention_head_dim: int = 32
    norm_groups: int = 8
    time_embed_mult: int = 3
    token_dim: int = 64
    conditions: tuple[str, ...] = CONDITION_NAMES
    band_gap_frequencies: int = 8
    band_gap_scale: float = 10.0
    stem_kernel: int = 3
    upsample: str = "nearest"
    dropout: float = 0.0
    periodic_features: bool = False
    self_condition: bool = False
    pair_bias: bool = False
    atom_attention: int = 0

    def __post_init__(self) -> None:
        # Normalise JSON lists back to tuples so configs compare equal after a round trip.
        object.__setattr__(self, "channel_mults", tuple(int(m) for m in self.channel_mults))
        object.__setattr__(self, "conditions", tuple(self.conditions))
        if self.attention_levels is not None:
            object.__setattr__(
                self, "attention_levels", tuple(int(i) for i in self.attention_levels)
            )
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        for name in ("attention", "mid_attention"):
            if getattr(self, name) not in ATTENTION_KINDS:
                raise ValueError(
                    f"{name} must be one of {ATTENTION_KINDS}, got {getattr(self, name)!r}"
                )
        if self.upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {self.upsample!r}")
        if not self.channel_mults or any(m < 1 for m in self.channel_mults):
            raise ValueError(f"channel_mults must be positive integers, got {self.channel_mults}")
        n = len(self.channel_mults)
        if self.attention_levels is not None and any(not 0 <= i < n for i in self.attention_levels):
            raise ValueError(f"attention_levels must index 0..{n - 1}, got {self.attention_levels}")
        unknown = set(self.conditions) - set(CONDITION_NAMES)
        if unknown:
            raise ValueError(f"unknown condition(s) {sorted(unknown)}; use {CONDITION_NAMES}")
        if self.pair_bias and self.layout != "seq1d":
            raise ValueError("pair_bias needs layout='seq1d' (one position per row)")
        if self.atom_attention and self.layout != "seq1d":
            raise ValueError("atom_attention needs layout='seq1d' (one position per row)")
        if self.atom_attention < 0:
            raise ValueError(f"atom_attention must be ≥ 0 layers, got {self.atom_attention}")
        if self.stem_kernel % 2 == 0:
            raise ValueError(f"stem_kernel must be odd, got {self.stem_kernel}")
        if min(self.num_res_blocks, self.base_channels, self.mid_blocks) < 1:
            raise ValueError("num_res_blocks, mid_blocks and base_channels must be ≥ 1")
        if ROWS % self.row_reduction:
            raise ValueError(f"{n} levels reduce {ROWS} rows by {self.row_reduction}: not integral")

    @property
    def row_reduction(self) -> int:
        """Factor by which the rows shrink from the input to the middle block."""
        return 2 ** (len(self.channel_mults) - 1)

    @property
    def spatial_dims(self) -> int:
        return 2 if self.layout == "grid2d" else 1

    @property
    def emb_dim(self) -> int:
        return self.base_channels * self.time_embed_mult

    def level_attention(self, level: int) -> str:
        if self.attention_levels is None or level in self.attention_levels:
            return self.attention
        return "none"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mults"] = list(self.channel_mults)
        d["conditions"] = list(self.conditions)
        if self.attention_levels is not None:
            d["attention_levels"] = list(self.attention_levels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown UNetConfig field(s) {sorted(unknown)}")
        return cls(**d)


PRESETS: dict[str, UNetConfig] = {
    # The published scale: Conv2d on the 3×128×3 image, widths 64…1024 over five levels,
    # linear attention in every level, three residual blocks with full attention between them
    # in the middle, row-only (4, 3)/(2, 1) downsampling, nearest row upsampling, 7×7 stem.
    "paper": UNetConfig(
        layout="grid2d",
        base_channels=64,
        channel_mults=(1, 2, 4, 8, 16),
        num_res_blocks=2,
        attention="linear",
        attention_levels=None,
        mid_attention="full",
        mid_blocks=3,
        time_embed_mult=4,
        token_dim=128,
        stem_kernel=7,
        upsample="nearest",
    ),
    # The shipped default (= UNetConfig()): a sequence of 128 rows × 9 channels, five levels at
    # 128, 64, 32, 16, 8 rows with widths 64, 64, 64→128, 128, 128→192, full attention at 16
    # and 8 rows and in the middle, 192-wide embedding. ≈4.6M parameters, ≈0.16 GFLOP/sample.
    "cpu": UNetConfig(),
    # The cpu layout twice as wide (128, 128, 128→256, 256, 256): ≈14.2M parameters, ≈0.57
    # GFLOP/sample. Memorising 256 train crystals (BENCHMARKS, memorisation.py) it reproduced
    # twice as many as ``cpu`` in the same steps: the first lever that moved learning.
    "wide": UNetConfig(base_channels=128, channel_mults=(1, 1, 2, 2, 2)),
    # For tests: a few tens of thousands of parameters.
    "tiny": UNetConfig(
        layout="seq1d",
        base_channels=8,
        channel_mults=(1, 2, 2),
        num_res_blocks=1,
        attention="full",
        attention_levels=(2,),
        mid_attention="full",
        attention_heads=2,
        attention_head_dim=8,
        norm_groups=4,
        time_embed_mult=4,
        token_dim=8,
        band_gap_frequencies=4,
    ),
}


def preset_config(name: str, overrides: dict | None = None) -> UNetConfig:
    """A preset with some fields replaced, checked: the one place a preset name and overrides
    (``pccd train --preset / --model-option``, a checkpoint's ``TrainConfig``) become a
    network config.

    Raises:
        InputError: an unknown preset or field, or values the config refuses.
    """
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    overrides = {} if overrides is None else overrides
    if not isinstance(overrides, dict):
        raise InputError(f"model_overrides must be a KEY=VALUE mapping, got {overrides!r}")
    names = [f.name for f in fields(UNetConfig)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise InputError(
            f"unknown network field(s) {', '.join(unknown)}; valid: {', '.join(names)}"
        )
    try:
        return replace(PRESETS[name], **overrides)
    except (TypeError, ValueError) as exc:  # the config's own checks (__post_init__)
        raise InputError(" ".join(str(exc).split())) from exc


"""Named configurations; ``PCCDUNet.from_preset(name, **overrides)`` builds one."""

DEFAULT_PRESET = "cpu"


class _Level(nn.Module):
    """Residual blocks at one resolution, one attention after them, then a transition layer."""

    def __init__(self, blocks: list[nn.Module], attn: nn.Module, transition: nn.Module):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attn = attn
        self.transition = transition


class PCCDUNet(nn.Module):
    """Conditional noise predictor ε_θ(x_t, t, c) for (B, 3, 128, 3) crystal arrays.

    Args:
        config: architecture; defaults to the ``cpu`` preset.
        preset: name recorded in ``config.json`` (informational).
    """

    def __init__(self, config: UNetConfig | None = None, preset: str | None = None) -> None:
        super().__init__()
        config = config if config is not None else PRESETS[DEFAULT_PRESET]
        self.config = config
        self.preset = preset
        sd = config.spatial_dims
        c_data = CHANNELS if config.layout == "grid2d" else CHANNELS * COLUMNS
        # cos and sin of each coordinate column: 2 extra image channels or 6 sequence channels
        per_channel = 1 if config.layout == "grid2d" else COLUMNS
        c_extra = per_channel * (2 * config.periodic_features + CHANNELS * config.self_condition)
        base = config.base_channels
        emb = config.emb_dim
        groups = config.norm_groups
        heads, head_dim = config.attention_heads, config.attention_head_dim

        def res(c_in: int, c_out: int) -> ResBlock:
            return ResBlock(sd, c_in, c_out, emb, groups=groups, dropout=config.dropout)

        def attn(channels: int, kind: str) -> nn.Module:
            if kind == "none":
                return nn.Identity()
            pair_dim = PERIODIC_FEATURES if config.pair_bias and kind == "full" else 0
            return Attention(
                channels, kind, heads=heads, head_dim=head_dim, groups=groups, pair_dim=pair_dim
            )

        self.time_embed = TimeEmbedding(base, emb)
        self.cond_encoder = ConditionEncoder(
            emb,
            config.token_dim,
            conditions=config.conditions,
            band_gap_frequencies=config.band_gap_frequencies,
            band_gap_scale=config.band_gap_scale,
        )
        self.stem = conv(sd, c_data + c_extra, base, config.stem_kernel)

        widths = [base] + [base * m for m in config.channel_mults]
        n_levels = len(config.channel_mults)
        self.down = nn.ModuleList()
        for i in range(n_levels):
            c_in, c_out = widths[i], widths[i + 1]
            kind = config.level_attention(i)
            halve = i < n_levels - 1
            self.down.append(
                _Level(
                    [res(c_in, c_in) for _ in range(config.num_res_blocks)],
                    attn(c_in, kind),
                    Downsample(sd, c_in, c_out) if halve else conv(sd, c_in, c_out, 3),
                )
            )

        # atom tokens at full resolution: after level 0's encoder blocks and decoder blocks
        layers = config.atom_attention
        self.atoms_down = AtomAttention(widths[0], layers, heads, head_dim) if layers else None
        self.atoms_up = AtomAttention(widths[1], layers, heads, head_dim) if layers else None

        mid = widths[-1]
        # Middle: res, then (attention, res) repeated — mid_blocks residual blocks in all.
        self.mid_blocks = nn.ModuleList([res(mid, mid) for _ in range(config.mid_blocks)])
        self.mid_attns = nn.ModuleList(
            [attn(mid, config.mid_attention) for _ in range(config.mid_blocks - 1)]
        )

        self.up = nn.ModuleList()
        for i in reversed(range(n_levels)):
            c_in, c_out = widths[i], widths[i + 1]
            kind = config.level_attention(i)
            # Each decoder block sees its own width plus the matching encoder skip (c_in);
            # the transition mirrors the encoder: back to the previous level's rows and width.
            self.up.append(
                _Level(
                    [res(c_out + c_in, c_out) for _ in range(config.num_res_blocks)],
                    attn(c_out, kind),
                    Upsample(sd, c_out, c_in, mode=config.upsample)
                    if i > 0
                    else conv(sd, c_out, c_in, 3),
                )
            )
        self.final_block = res(2 * base, base)
        self.final_norm = group_norm(base, groups)
        self.final_conv = conv(sd, base, c_data, 1)

    # ------------------------------------------------------------------ forward
    @property
    def self_conditioning(self) -> bool:
        """Whether :meth:`forward` takes ``x_self`` (samplers and the loss ask this)."""
        return self.config.self_condition

    def _to_layout(self, x: torch.Tensor, x_self: torch.Tensor | None = None) -> torch.Tensor:
        extra = []
        if self.config.self_condition:
            extra.append(torch.zeros_like(x) if x_self is None else x_self)
        if self.config.periodic_features:
            angle = torch.pi * (x[:, :1] + 1.0)  # channel 0 holds 2·frac − 1
            extra += [torch.cos(angle), torch.sin(angle)]
        if extra:
            x = torch.cat([x, *extra], dim=1)
        if self.config.layout == "grid2d":
            return x
        b, c, r, w = x.shape
        # channel index = array channel * COLUMNS + column
        return x.permute(0, 1, 3, 2).reshape(b, c * w, r)

    def _from_layout(self, h: torch.Tensor) -> torch.Tensor:
        if self.config.layout == "grid2d":
            return h
        b, _, r = h.shape
        return h.reshape(b, CHANNELS, COLUMNS, r).permute(0, 1, 3, 2)

    def embed(self, t: torch.Tensor, cond: Conditions) -> torch.Tensor:
        """The (B, emb_dim) vector that drives FiLM: time embedding + condition embedding."""
        return self.time_embed(t) + self.cond_encoder(cond)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: Conditions,
        x_self: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the noise ε in ``x`` (B, 3, 128, 3) at time steps ``t`` (B,) given ``cond``.

        ``x_self``: the previous estimate of the clean array (self-conditioning models only;
        ``None`` = no estimate yet, fed as zeros).
        """
        if x.dim() != 4 or x.shape[1] != CHANNELS or x.shape[3] != COLUMNS:
            raise ValueError(
                f"expected x of shape (B, {CHANNELS}, rows, {COLUMNS}), got {tuple(x.shape)}"
            )
        if x.shape[2] % self.config.row_reduction:
            raise ValueError(
                f"rows ({x.shape[2]}) must be divisible by {self.config.row_reduction}"
            )
        if t.shape != (x.shape[0],) or cond.batch_size != x.shape[0]:
            raise ValueError(
                f"batch mismatch: x {x.shape[0]}, t {tuple(t.shape)}, cond {cond.batch_size}"
            )
        emb = self.embed(t, cond)
        pos = periodic_row_features(x) if self.config.pair_bias else None
        h = self.stem(self._to_layout(x, x_self))
        stem_out = h
        skips: list[torch.Tensor] = []
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.blocks):
                h = block(h, emb)
                if j == len(level.blocks) - 1:
                    h = _attend(level.attn, h, pos)
                    if i == 0 and self.atoms_down is not None:
                        h = self.atoms_down(h, x, cond.formula)
                skips.append(h)
            h = level.transition(h)
        h = self.mid_blocks[0](h, emb)
        for attn, block in zip(self.mid_attns, self.mid_blocks[1:], strict=True):
            h = block(_attend(attn, h, pos), emb)
        for level in self.up:
            for block in level.blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            h = _attend(level.attn, h, pos)
            if not skips and self.atoms_up is not None:  # level 0: full row resolution
                h = self.atoms_up(h, x, cond.formula)
            h = level.transition(h)
        h = self.final_block(torch.cat([h, stem_out], dim=1), emb)
        h = self.final_conv(nn.functional.silu(self.final_norm(h)))
        return self._from_layout(h)

    # ------------------------------------------------------------------ persistence
    @classmethod
    def from_preset(cls, name: str = DEFAULT_PRESET, **overrides) -> PCCDUNet:
        """Build a preset, optionally with some config fields replaced."""
        return cls(preset_config(name, overrides), preset=name)

    def save_pretrained(self, directory: str | Path, dtype: str = "float32") -> Path:
        """Write ``config.json`` (config fields, ``"preset"``, ``"weights_dtype"``) and
        ``model.pt`` (state dict).

        ``dtype="float16"`` halves ``model.pt`` (e.g. the 14.2M-parameter ``wide`` preset:
        57 → 28 MB, under the repository's 50 MB weights limit) at a rounding of the weights to
        11 significant bits; :meth:`from_pretrained` casts back to float32.
        """
        if dtype not in WEIGHTS_DTYPES:
            raise InputError(f"unknown weights dtype {dtype!r}; choose from {list(WEIGHTS_DTYPES)}")
        state = self.state_dict()
        if dtype != "float32":
            state = {name: _to_storage(name, tensor, dtype) for name, tensor in state.items()}
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        payload = {**self.config.to_dict(), "preset": self.preset, "weights_dtype": dtype}
        (directory / CONFIG_FILE).write_text(json.dumps(payload, indent=2) + "\n")
        torch.save(state, directory / WEIGHTS_FILE)
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, map_location: str | torch.device | None = None
    ) -> PCCDUNet:
        """Load a model written by :meth:`save_pretrained` (weights-only unpickling), in
        float32 whatever precision ``model.pt`` stores."""
        directory = Path(directory)
        payload = json.loads((directory / CONFIG_FILE).read_text())
        preset = payload.pop("preset", None)
        payload.pop("weights_dtype", None)
        model = cls(UNetConfig.from_dict(payload), preset=preset)
        model.load_state_dict(load_weights(directory, map_location))
        return model


def load_weights(
    directory: str | Path, map_location: str | torch.device | None = None
) -> dict[str, torch.Tensor]:
    """The state dict in a pretrained model directory's ``model.pt``, floats in float32.

    Checks that the stored tensors have the precision ``config.json`` records (``weights_dtype``;
    a directory written before it existed holds float32).
    """
    directory = Path(directory)
    config = directory / CONFIG_FILE
    dtype = "float32"
    if config.exists():
        dtype = json.loads(config.read_text()).get("weights_dtype", "float32")
    if dtype not in WEIGHTS_DTYPES:
        raise ValueError(f"{config}: unknown weights_dtype {dtype!r}")
    state = torch.load(directory / WEIGHTS_FILE, map_location=map_location, weights_only=True)
    stored = {str(t.dtype) for t in state.values() if t.is_floating_point()}
    if stored - {str(WEIGHTS_DTYPES[dtype])}:
        raise ValueError(
            f"{directory / WEIGHTS_FILE} holds {sorted(stored)} tensors but {CONFIG_FILE} "
            f"records weights_dtype {dtype!r}"
        )
    return {k: t.float() if t.is_floating_point() else t for k, t in state.items()}


def _to_storage(name: str, tensor: torch.Tensor, dtype: str) -> torch.Tensor:
    """A floating tensor in the storage precision; an error if a value overflows it."""
    if not tensor.is_floating_point():
        return tensor
    cast = tensor.to(WEIGHTS_DTYPES[dtype])
    if not torch.isfinite(cast).all() and torch.isfinite(tensor).all():
        raise ValueError(f"{name}: values beyond the range of {dtype}")
    return cast


# ---------------------------------------------------------------------- helpers
def _attend(attn: nn.Module, h: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    """Apply a level's attention; pair-biased attention gets the row features pooled to the
    level's resolution (each position averages the rows it summarises)."""
    if pos is None or not isinstance(attn, Attention) or attn.pair is None:
        return attn(h)
    rows = h.shape[-1]
    pooled = pos.reshape(pos.shape[0], rows, pos.shape[1] // rows, -1).mean(dim=2)
    return attn(h, pooled)


def warm_start(model: PCCDUNet, state: dict[str, torch.Tensor]) -> list[str]:
    """Load a smaller model's weights into ``model`` so it computes the same function.

    Why: architecture options (more attention levels, periodic input features) can then be
    tried by fine-tuning a trained model instead of hours of training from scratch. Tensors of
    equal shape are copied; the stem's extra input channels get zero weights; every attention
    that ``state`` lacks gets a zero output projection, so its residual branch starts as the
    identity; a label condition that ``state`` lacks (e.g. ``stability`` on top of a model
    made before it) gets a zero embedding, so it adds nothing until it is trained. Returns the
    names of parameters that were not in ``state``.
    """
    own = model.state_dict()
    new: list[str] = []
    with torch.no_grad():
        for name, tensor in own.items():
            old = state.get(name)
            if old is not None and old.shape == tensor.shape:
                tensor.copy_(old)
            elif old is not None and name == "stem.weight" and old.shape[1] < tensor.shape[1]:
                tensor.zero_()
                tensor[:, : old.shape[1]].copy_(old)
            elif old is not None:
                raise ValueError(
                    f"{name}: shape {tuple(old.shape)} cannot seed {tuple(tensor.shape)}"
                )
            else:
                new.append(name)
        for module_name, module in model.named_modules():
            if isinstance(module, Attention) and f"{module_name}.out.weight" in new:
                module.out.weight.zero_()
                module.out.bias.zero_()
        for embed in ("magnetic_embed", "stability_embed"):
            if f"cond_encoder.{embed}.weight" in new:
                getattr(model.cond_encoder, embed).weight.zero_()
    return new


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def example_inputs(
    batch_size: int = 1, device: torch.device | str = "cpu", conditioned: bool = True
) -> tuple[torch.Tensor, torch.Tensor, Conditions]:
    """Deterministic dummy ``(x, t, cond)`` for shape checks and FLOP counting.

    With ``conditioned`` every condition is present, so every encoder branch runs.
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, CHANNELS, ROWS, COLUMNS, generator=gen).to(device)
    t = torch.randint(0, 1000, (batch_size,), generator=gen).to(device)
    if conditioned:
        cond = Conditions.from_lists(
            [[3, 8, 26]] * batch_size,
            band_gap=1.5,
            magnetic="FM",
            formula=[[2, 4, 2]] * batch_size,
            stability="stable",
        )
    else:
        cond = Conditions.unconditional(batch_size)
    return x, t, cond.to(device)


def forward_flops(model: PCCDUNet, batch_size: int = 1) -> float:
    """FLOPs of one forward pass **per sample** (a multiply-add counts 2), as counted by
    :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions, matmuls, attention).

    Divide by 1e9 for GFLOP; halve for multiply-accumulates (MACs), the unit some papers and
    tools (e.g. ``thop``) call "FLOPs". Works on CPU or meta-device models.
    """
    device = next(model.parameters()).device
    x, t, cond = example_inputs(batch_size, device=device)
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(x, t, cond)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / batch_size


def describe(model: PCCDUNet) -> dict[str, float | int | str | None]:
    """Parameters and per-sample forward GFLOP of a model (for logs and reports)."""
    return {
        "preset": model.preset,
        "parameters": count_parameters(model),
        "gflops_per_sample": forward_flops(model) / 1e9,
    }


__all__: Sequence[str] = (
    "CHANNELS",
    "COLUMNS",
    "MAX_SLOTS",
    "PRESETS",
    "ROWS",
    "PCCDUNet",
    "UNetConfig",
    "count_parameters",
    "describe",
    "example_inputs",
    "forward_flops",
    "load_weights",
    "preset_config",
    "warm_start",
)
