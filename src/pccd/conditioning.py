"""Conditions a PCCD denoiser is given, as one batch container.

A crystal is generated *given* some of: its elements, its band gap, its magnetic ordering, its
formula (atom counts per element) and its stability (near the convex hull or not). Any of them
may be missing for a sample: missing in the data (e.g. no band gap computed) or deliberately
dropped for classifier-free guidance. Rather than one tensor per situation, :class:`Conditions`
always carries every field and encodes "missing" *in-band* (NaN, ``-1``, a flag), so a batch
can mix conditioned and unconditioned samples and the model sees one fixed input signature.

Element slots
    Up to :data:`MAX_SLOTS` elements per crystal, in canonical slot order = ascending atomic
    number Z, unused slots hold Z = 0 and come last. The point-cloud representation orders the
    one-hot columns of its channel 1 the same way (column k ↔ slot k), which is what lets the
    network tie "slot k is oxygen" to "rows whose channel-1 column k is +1 are oxygen atoms".

Missing values
    ======================  =====================================  ==========================
    field                   meaning                                missing / null
    ======================  =====================================  ==========================
    ``elements``            (B, 3) Z per slot, 0 = empty slot      ``elements_dropped`` True
    ``band_gap``            (B,) eV                                NaN
    ``magnetic``            (B,) index into MAGNETIC_ORDERINGS     -1
    ``formula``             (B, 3) atoms per slot, 0 = empty slot  the whole row is -1
    ``stability``           (B,) index into STABILITY_LABELS       -1
    ======================  =====================================  ==========================

Stability
    A binary label, MatterGen-style: 1 = ``"stable"`` when the energy above the convex hull is
    below :data:`STABLE_E_ABOVE_HULL` (0.08 eV/atom), 0 = ``"unstable"`` at or above it, -1 =
    unknown (no energy for the crystal) or dropped. :func:`stability_index` is the one place
    that turns an E_hull value into the label. In the MP training splits the E_hull column is
    recomputed from 2018 formation energies alone (phases missing from the table make it
    approximate), so the label means "stable by that estimate".

This module deliberately holds no ``torch.nn`` code: the learned embeddings (including the
learned "null" vectors used when a value is missing) live in :mod:`pccd.model`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import torch

MAGNETIC_ORDERINGS = ("NM", "FM", "AFM", "FiM")
"""Magnetic orderings, index = value of ``Conditions.magnetic``: non-, ferro-, antiferro-,
ferrimagnetic (Materials Project's vocabulary)."""
MAX_SLOTS = 3
"""At most this many distinct elements per crystal (the representation has 3 one-hot columns)."""
MAX_ATOMS = 16
"""At most this many atoms per cell (the paper's dataset: ≤16 sites)."""
MAX_Z = 118
"""Largest atomic number accepted."""
STABILITY_LABELS = ("unstable", "stable")
"""Stability labels, index = value of ``Conditions.stability``."""
STABLE_E_ABOVE_HULL = 0.08
"""A crystal is ``"stable"`` when its energy above the hull is below this (eV/atom): stable
or slightly metastable. The project's choice for the condition (issue 15); the training
data's E_hull is approximate anyway (see the module docstring)."""
METAL_THRESHOLD_EV = 0.1
"""A PBE band gap below this (eV) is a metal; MP's sub-0.1 eV gaps are numerical, not physical.
The one metal / non-metal line for the band-gap instrument and for training on the gap."""
CONDITION_NAMES = ("elements", "band_gap", "magnetic", "formula", "stability")
"""Names accepted by :meth:`Conditions.drop` (and by the model's ``conditions`` option).

New conditions are appended, never inserted: :meth:`Conditions.drop` draws in this order, so
seeded runs that drop only the earlier conditions keep their random draws."""


def stability_index(e_above_hull: float | None) -> int:
    """The stability label index of an energy above the hull (eV/atom).

    1 (``"stable"``) below :data:`STABLE_E_ABOVE_HULL`, 0 (``"unstable"``) at or above it,
    -1 when the value is unknown (``None`` or NaN).
    """
    if e_above_hull is None:
        return -1
    value = float(e_above_hull)
    if math.isnan(value):
        return -1
    return 1 if value < STABLE_E_ABOVE_HULL else 0


@dataclass
class Conditions:
    """A batch of conditions (all tensors share the batch dimension B and a device).

    Attributes:
        elements: ``(B, 3)`` long, atomic number per slot, ascending, 0 = empty slot (last).
        band_gap: ``(B,)`` float, band gap in eV; NaN = missing.
        magnetic: ``(B,)`` long, index into :data:`MAGNETIC_ORDERINGS`; -1 = missing.
        formula: ``(B, 3)`` long, atoms of each slot's element in the cell, 0 for empty slots;
            a row of all -1 = missing (not conditioned on). Crystal-structure prediction gives it.
        elements_dropped: ``(B,)`` bool, True = the element condition is replaced by the
            model's learned null (unconditional w.r.t. elements). ``elements`` is then ignored.
        stability: ``(B,)`` long, index into :data:`STABILITY_LABELS`; -1 = missing. Last and
            optional (``None`` = missing for every sample) so that code written before it
            existed keeps building batches positionally.

    Construct from Python lists with :meth:`from_lists` (sorts, pads and validates); the plain
    constructor only checks shapes and dtypes, because it is also used inside training loops
    on already-valid tensors.
    """

    elements: torch.Tensor
    band_gap: torch.Tensor
    magnetic: torch.Tensor
    formula: torch.Tensor
    elements_dropped: torch.Tensor
    stability: torch.Tensor = None  # type: ignore[assignment]  # None → all missing

    def __post_init__(self) -> None:
        b = self.elements.shape[0] if self.elements.dim() == 2 else -1
        if self.stability is None and isinstance(self.elements, torch.Tensor):
            self.stability = torch.full(
                (max(b, 0),), -1, dtype=torch.long, device=self.elements.device
            )
        expected = {
            "elements": ((b, MAX_SLOTS), torch.long),
            "band_gap": ((b,), None),
            "magnetic": ((b,), torch.long),
            "formula": ((b, MAX_SLOTS), torch.long),
            "elements_dropped": ((b,), torch.bool),
            "stability": ((b,), torch.long),
        }
        for name, (shape, dtype) in expected.items():
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"Conditions.{name} must be a torch.Tensor, got {type(value)}")
            if tuple(value.shape) != shape:
                raise ValueError(
                    f"Conditions.{name} must have shape {shape} (B={b}), got {tuple(value.shape)}"
                )
            if dtype is not None and value.dtype != dtype:
                raise ValueError(f"Conditions.{name} must have dtype {dtype}, got {value.dtype}")
        if not self.band_gap.is_floating_point():
            raise ValueError(
                f"Conditions.band_gap must be floating point, got {self.band_gap.dtype}"
            )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_lists(
        cls,
        elements: Sequence[Sequence[int] | None],
        band_gap: Sequence[float | None] | float | None = None,
        magnetic: Sequence[int | str | None] | int | str | None = None,
        formula: Sequence[Sequence[int] | None] | None = None,
        stability: Sequence[int | str | None] | int | str | None = None,
    ) -> Conditions:
        """Build a validated batch from plain Python values, one entry per sample.

        Args:
            elements: per sample a list of distinct atomic numbers in any order (at most 3);
                ``None`` or ``[]`` = no element condition (``elements_dropped``).
            band_gap: per sample eV or ``None`` (missing); a single number is broadcast;
                ``None`` = missing for all.
            magnetic: per sample an index or a name from :data:`MAGNETIC_ORDERINGS`
                (case-insensitive) or ``None``; a single value is broadcast.
            formula: per sample atom counts aligned with *that sample's* ``elements`` list as
                given (they are permuted together with the sort by Z), or ``None`` = missing.
            stability: per sample an index or a name from :data:`STABILITY_LABELS`
                (``"stable"`` / ``"unstable"``, case-insensitive) or ``None``; a single value
                is broadcast.

        Raises:
            ValueError: on out-of-range or inconsistent values, naming the sample.
        """
        n = len(elements)
        z_rows: list[list[int]] = []
        f_rows: list[list[int]] = []
        dropped: list[bool] = []
        if formula is not None and len(formula) != n:
            raise ValueError(f"formula has {len(formula)} entries but elements has {n}")
        for i, els in enumerate(elements):
            counts = None if formula is None else formula[i]
            if els is None or len(els) == 0:
                if counts is not None:
                    raise ValueError(
                        f"sample {i}: a formula needs the elements it counts (elements missing)"
                    )
                z_rows.append([0] * MAX_SLOTS)
                f_rows.append([-1] * MAX_SLOTS)
                dropped.append(True)
                continue
            els = [int(z) for z in els]
            if len(els) > MAX_SLOTS:
                raise ValueError(f"sample {i}: at most {MAX_SLOTS} elements, got {len(els)}")
            if any(not 1 <= z <= MAX_Z for z in els):
                raise ValueError(f"sample {i}: atomic numbers must be in 1..{MAX_Z}, got {els}")
            if len(set(els)) != len(els):
                raise ValueError(f"sample {i}: elements must be distinct, got {els}")
            order = sorted(range(len(els)), key=lambda k: els[k])
            pad = [0] * (MAX_SLOTS - len(els))
            z_rows.append([els[k] for k in order] + pad)
            dropped.append(False)
            if counts is None:
                f_rows.append([-1] * MAX_SLOTS)
                continue
            counts = [int(c) for c in counts]
            if len(counts) != len(els):
                raise ValueError(
                    f"sample {i}: formula has {len(counts)} counts for {len(els)} elements"
                )
            if any(not 1 <= c <= MAX_ATOMS for c in counts):
                raise ValueError(f"sample {i}: atom counts must be in 1..{MAX_ATOMS}, got {counts}")
            if sum(counts) > MAX_ATOMS:
                raise ValueError(
                    f"sample {i}: at most {MAX_ATOMS} atoms per cell, formula sums to {sum(counts)}"
                )
            f_rows.append([counts[k] for k in order] + pad)

        gaps = _broadcast(band_gap, n, "band_gap")
        gap_values: list[float] = []
        for i, g in enumerate(gaps):
            if g is None or (isinstance(g, float) and math.isnan(g)):
                gap_values.append(math.nan)
                continue
            g = float(g)
            if not math.isfinite(g) or g < 0:
                raise ValueError(f"sample {i}: band gap must be a finite value ≥ 0 eV, got {g}")
            gap_values.append(g)

        mags = _broadcast(magnetic, n, "magnetic")
        mag_values = [
            _label_index(m, MAGNETIC_ORDERINGS, i, "magnetic ordering", "magnetic")
            for i, m in enumerate(mags)
        ]

        stabs = _broadcast(stability, n, "stability")
        stab_values = [
            _label_index(s, STABILITY_LABELS, i, "stability", "stability")
            for i, s in enumerate(stabs)
        ]

        return cls(
            elements=torch.tensor(z_rows, dtype=torch.long).reshape(n, MAX_SLOTS),
            band_gap=torch.tensor(gap_values, dtype=torch.float32),
            magnetic=torch.tensor(mag_values, dtype=torch.long),
            formula=torch.tensor(f_rows, dtype=torch.long).reshape(n, MAX_SLOTS),
            elements_dropped=torch.tensor(dropped, dtype=torch.bool),
            stability=torch.tensor(stab_values, dtype=torch.long),
        )

    @classmethod
    def unconditional(cls, batch_size: int, device: torch.device | str | None = None) -> Conditions:
        """A batch with every condition missing (plain unconditional generation)."""
        b = batch_size
        return cls(
            elements=torch.zeros(b, MAX_SLOTS, dtype=torch.long, device=device),
            band_gap=torch.full((b,), math.nan, device=device),
            magnetic=torch.full((b,), -1, dtype=torch.long, device=device),
            formula=torch.full((b, MAX_SLOTS), -1, dtype=torch.long, device=device),
            elements_dropped=torch.ones(b, dtype=torch.bool, device=device),
            stability=torch.full((b,), -1, dtype=torch.long, device=device),
        )

    # ------------------------------------------------------------------ batch plumbing
    @property
    def batch_size(self) -> int:
        """Number of samples B (a property: ``cond.batch_size``, also ``len(cond)``)."""
        return self.elements.shape[0]

    def __len__(self) -> int:
        return self.batch_size

    @property
    def device(self) -> torch.device:
        return self.elements.device

    def _map(self, fn) -> Conditions:
        return Conditions(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, device: torch.device | str) -> Conditions:
        """Copy to ``device`` (dtypes unchanged)."""
        return self._map(lambda t: t.to(device))

    def index(self, idx: int | slice | Sequence[int] | torch.Tensor) -> Conditions:
        """Select samples (positions, a slice or a bool mask); an ``int`` keeps the batch
        dimension (a batch of one)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(-1, None)
        elif not isinstance(idx, slice | torch.Tensor):
            idx = torch.as_tensor(list(idx))
            if idx.dtype != torch.bool:  # a list of bools is a mask, anything else positions
                idx = idx.long()
        if isinstance(idx, torch.Tensor):
            idx = idx.to(self.device)
        return self._map(lambda t: t[idx])

    __getitem__ = index

    def repeat_interleave(self, repeats: int) -> Conditions:
        """Each sample ``repeats`` times in a row (e.g. several crystals per condition)."""
        return self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    @classmethod
    def cat(cls, items: Sequence[Conditions]) -> Conditions:
        """Concatenate batches along the batch dimension."""
        if not items:
            raise ValueError("Conditions.cat needs at least one batch")
        return cls(**{f.name: torch.cat([getattr(c, f.name) for c in items]) for f in fields(cls)})

    # ------------------------------------------------------------------ missingness
    @property
    def band_gap_missing(self) -> torch.Tensor:
        return torch.isnan(self.band_gap)

    @property
    def magnetic_missing(self) -> torch.Tensor:
        return self.magnetic < 0

    @property
    def formula_missing(self) -> torch.Tensor:
        return (self.formula < 0).all(dim=-1)

    @property
    def stability_missing(self) -> torch.Tensor:
        return self.stability < 0

    def missing(self) -> dict[str, torch.Tensor]:
        """Per condition name, a ``(B,)`` bool mask of samples where it is missing/null."""
        return {
            "elements": self.elements_dropped.clone(),
            "band_gap": self.band_gap_missing,
            "magnetic": self.magnetic_missing,
            "formula": self.formula_missing,
            "stability": self.stability_missing,
        }

    def drop(
        self, probs: Mapping[str, float], generator: torch.Generator | None = None
    ) -> Conditions:
        """Classifier-free-guidance dropout: a copy where each named condition is set to
        missing/null per sample, independently, with its probability.

        The model learns ε(x_t | c) and ε(x_t | ∅) in one network only if it regularly sees
        each condition replaced by its null; dropping conditions independently (rather than all
        together) also trains every partial combination, so at sampling time any subset of
        conditions can be given. Random draws are made in the fixed :data:`CONDITION_NAMES`
        order so a seeded generator gives the same result whatever the dict order.
        """
        unknown = set(probs) - set(CONDITION_NAMES)
        if unknown:
            raise ValueError(f"unknown condition(s) {sorted(unknown)}; use {CONDITION_NAMES}")
        b = self.batch_size
        gen_device = generator.device if generator is not None else self.device
        out = self._map(lambda t: t.clone())
        for name in CONDITION_NAMES:
            if name not in probs:
                continue
            p = float(probs[name])
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"drop probability for {name!r} must be in [0, 1], got {p}")
            mask = (torch.rand(b, generator=generator, device=gen_device) < p).to(self.device)
            out._set_null(name, mask)
        return out

    def without(self, names: Sequence[str]) -> Conditions:
        """A copy with the named conditions set to missing/null in every sample, the others kept.

        The unconditional branch of guidance on some conditions only (e.g. ``["band_gap"]``:
        ε(elements) + s·(ε(elements, gap) − ε(elements))), which training supports because
        :meth:`drop` nulls each condition independently.
        """
        unknown = set(names) - set(CONDITION_NAMES)
        if unknown:
            raise ValueError(f"unknown condition(s) {sorted(unknown)}; use {CONDITION_NAMES}")
        out = self._map(lambda t: t.clone())
        everyone = torch.ones(self.batch_size, dtype=torch.bool, device=self.device)
        for name in names:
            out._set_null(name, everyone)
        return out

    def _set_null(self, name: str, mask: torch.Tensor) -> None:
        """Null condition ``name`` in place where ``mask`` (B,) is True (only on own copies)."""
        if name == "elements":
            self.elements_dropped = self.elements_dropped | mask
        elif name == "band_gap":
            self.band_gap = torch.where(
                mask, torch.full_like(self.band_gap, math.nan), self.band_gap
            )
        elif name == "magnetic":
            self.magnetic = torch.where(mask, torch.full_like(self.magnetic, -1), self.magnetic)
        elif name == "stability":
            self.stability = torch.where(mask, torch.full_like(self.stability, -1), self.stability)
        else:
            self.formula = torch.where(
                mask[:, None], torch.full_like(self.formula, -1), self.formula
            )

    def null_like(self) -> Conditions:
        """Same batch size and device, every condition missing/null: the unconditional branch
        of classifier-free guidance."""
        return Conditions.unconditional(self.batch_size, device=self.device)

    def validate(self) -> None:
        """Check value ranges (slots sorted, Z in range, counts consistent); raise ValueError.

        Not called by the constructor, to keep training loops free of host syncs; call it on
        externally built tensors.
        """
        z = self.elements
        if ((z < 0) | (z > MAX_Z)).any():
            raise ValueError(f"elements must be atomic numbers in 1..{MAX_Z} or 0 (empty slot)")
        occupied = z > 0
        # occupied slots first, ascending Z
        if (occupied[:, 1:] & ~occupied[:, :-1]).any():
            raise ValueError("empty element slots (Z = 0) must come after occupied ones")
        both = occupied[:, 1:] & occupied[:, :-1]
        if (both & (z[:, 1:] <= z[:, :-1])).any():
            raise ValueError("element slots must hold distinct Z in ascending order")
        live = ~self.elements_dropped
        if (live & ~occupied[:, 0]).any():
            raise ValueError("a sample with an element condition needs at least one element")
        gap = self.band_gap[~self.band_gap_missing]
        if (~torch.isfinite(gap)).any() or (gap < 0).any():
            raise ValueError("band gaps must be finite and ≥ 0 eV (NaN = missing)")
        if ((self.magnetic < -1) | (self.magnetic >= len(MAGNETIC_ORDERINGS))).any():
            raise ValueError(f"magnetic must be -1 (missing) or 0..{len(MAGNETIC_ORDERINGS) - 1}")
        if ((self.stability < -1) | (self.stability >= len(STABILITY_LABELS))).any():
            raise ValueError(f"stability must be -1 (missing) or 0..{len(STABILITY_LABELS) - 1}")
        f = self.formula[~self.formula_missing]
        occ = occupied[~self.formula_missing]
        if (self.elements_dropped & ~self.formula_missing).any():
            raise ValueError("a formula needs its elements (elements_dropped with a formula)")
        bad_occupied = occ & ((f < 1) | (f > MAX_ATOMS))
        bad_empty = ~occ & (f != 0)
        if (bad_occupied | bad_empty).any():
            raise ValueError(
                f"formula counts must be 1..{MAX_ATOMS} on occupied slots and 0 on empty ones"
            )
        if (f.sum(dim=-1) > MAX_ATOMS).any():
            raise ValueError(f"a formula may hold at most {MAX_ATOMS} atoms")


def _broadcast(value, n: int, name: str) -> list:
    if value is None:
        return [None] * n
    if isinstance(value, str | int | float):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries but elements has {n}")
    return values


def _label_index(
    value: int | str | None, labels: Sequence[str], i: int, what: str, field: str
) -> int:
    """A per-sample label (a name from ``labels``, case-insensitive, or its index) as its index,
    -1 for ``None``; ``what`` / ``field`` name the condition in the errors (the one rule for
    every label condition: magnetic ordering, stability)."""
    if value is None:
        return -1
    if isinstance(value, str):
        lookup = {name.lower(): k for k, name in enumerate(labels)}
        key = value.strip().lower()
        if key not in lookup:
            raise ValueError(f"sample {i}: unknown {what} {value!r}; use one of {tuple(labels)}")
        return lookup[key]
    idx = int(value)
    if not -1 <= idx < len(labels):
        raise ValueError(
            f"sample {i}: {field} index must be -1 (missing) or 0..{len(labels) - 1}, got {idx}"
        )
    return idx
