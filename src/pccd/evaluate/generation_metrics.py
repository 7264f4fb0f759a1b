"""Per-structure and distribution metrics of generated crystals.

Structural validity follows CDVAE (Xie et al., ICLR 2022): every interatomic distance ≥ 0.5 Å
and a cell volume ≥ 0.1 Å³; pccd's model-quality target adds a volume-per-atom window
(5–60 Å³), passed as ``volume_per_atom``.

The de novo metrics of the CDVAE / DiffCSP protocol live here too: compositional validity
(SMACT), coverage (COV-R / COV-P) of fingerprints, Wasserstein distances of density and of the
number of elements, and uniqueness. Fingerprints come from :mod:`pccd.evaluate.fingerprints`,
novelty against a database from :mod:`pccd.evaluate.novelty`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Structure
from pymatgen.core.periodic_table import Element
from scipy.spatial.distance import cdist
from scipy.stats import wasserstein_distance


def min_interatomic_distance(structure: Structure) -> float:
    """Shortest distance (Å) between two sites, periodic images included.

    A one-atom cell's shortest distance is to its own image: the shortest lattice vector.
    """
    if len(structure) == 1:
        return float(min(structure.lattice.abc))
    dm = structure.distance_matrix
    return float(dm[np.triu_indices(len(structure), 1)].min())


def is_structurally_valid(
    structure: Structure | None,
    *,
    min_distance: float = 0.5,
    min_volume: float = 0.1,
    volume_per_atom: tuple[float, float] | None = None,
) -> bool:
    """True when all distances ≥ ``min_distance`` Å and the volume is sensible.

    ``None`` (a sample that did not decode) is invalid, so rates over all samples stay honest.
    """
    if structure is None:
        return False
    volume = structure.volume
    if not np.isfinite(volume) or volume < min_volume:
        return False
    if volume_per_atom is not None:
        v = volume / len(structure)
        if not volume_per_atom[0] <= v <= volume_per_atom[1]:
            return False
    return min_interatomic_distance(structure) >= min_distance


def has_exact_elements(
    structure: Structure | None, elements: Iterable[str | int | Element]
) -> bool:
    """True when the crystal contains exactly the requested elements, no more and no fewer."""
    if structure is None:
        return False
    wanted = {Element.from_Z(e) if isinstance(e, int) else Element(str(e)) for e in elements}
    return set(structure.composition.elements) == wanted


def atom_count_wasserstein(generated: Sequence[int], reference: Sequence[int]) -> float:
    """Wasserstein-1 distance between the atom-count distributions (in atoms)."""
    if len(generated) == 0:
        return float("inf")
    return float(wasserstein_distance(np.asarray(generated), np.asarray(reference)))


def request_quality(
    structures: Sequence[Structure | None],
    requested: Sequence[Iterable[str | int | Element]],
    reference_counts: Sequence[int],
) -> dict[str, float]:
    """The model issue's three generation-quality figures over one request per crystal.

    A failed decode (``None``) counts against the first two shares: they are over all requests,
    so a model cannot look better by failing on hard ones. Validity uses 5–60 Å³ per atom.
    """
    counts = [len(s) for s in structures if s is not None]
    return {
        "exact_elements": float(
            np.mean([has_exact_elements(s, r) for s, r in zip(structures, requested, strict=True)])
        ),
        "valid": float(
            np.mean([is_structurally_valid(s, volume_per_atom=(5.0, 60.0)) for s in structures])
        ),
        "atom_count_wasserstein": atom_count_wasserstein(counts, reference_counts),
    }


# --------------------------------------------------------------------------------------------
# Compositional validity (SMACT, the CDVAE rules)
# --------------------------------------------------------------------------------------------


def is_compositionally_valid(
    composition: Composition | Structure | str | None, *, oxidation_states_set: str = "smact14"
) -> bool:
    """SMACT charge neutrality + Pauling electronegativity test, as CDVAE scores samples.

    The rules (Xie et al. 2022, via ``smact.screening.smact_validity``): one element or only
    metals (an alloy) is valid; otherwise some assignment of the elements' oxidation states
    must be charge neutral for the formula's reduced counts and pass the Pauling test
    (cations less electronegative than anions). ``oxidation_states_set="smact14"`` is the list
    ``smact.Element.oxidation_states`` held in the SMACT 2.x that CDVAE used; SMACT 4's default
    (an ICSD-24 filtered list) is stricter and would not reproduce published numbers.
    ``None`` (a sample that did not decode) and compositions SMACT has no data for are invalid.
    """
    if composition is None:
        return False
    if isinstance(composition, Structure):
        composition = composition.composition
    try:
        from smact.screening import smact_validity  # optional extra: eval
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError('smact is needed: pip install -e ".[eval]"') from exc
    comp = Composition(composition)
    if not all(float(v).is_integer() for v in comp.values()):
        comp = Composition(comp.get_integer_formula_and_factor()[0])
    try:
        return bool(
            smact_validity(
                comp,
                use_pauling_test=True,
                include_alloys=True,
                oxidation_states_set=oxidation_states_set,
            )
        )
    except (KeyError, ValueError, TypeError):  # an element SMACT has no data for
        return False


# --------------------------------------------------------------------------------------------
# Coverage (COV-R / COV-P, CDVAE protocol)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Coverage:
    """COV-R (recall) and COV-P (precision) with the cut-offs used and the counts behind them.

    Attributes:
        recall: share of reference crystals with a generated crystal within both cut-offs.
        precision: share of generated crystals within both cut-offs of some reference crystal;
            the denominator is ``n_generated`` (crystals without a fingerprint count as misses).
    """

    recall: float
    precision: float
    struct_cutoff: float
    comp_cutoff: float
    n_generated: int
    n_with_fingerprint: int
    n_reference: int


class CompositionScaler:
    """Standardises Magpie vectors with a reference set's mean and std (CDVAE's ``CompScaler``).

    CDVAE fixes the scaling constants from its training data; pccd fits them on the reference
    set given (its own val split by default), so the distances are in units of the reference's
    spread per feature. Features with zero spread are left unscaled; NaN becomes 0 after
    scaling, as in CDVAE.
    """

    def __init__(self, reference: np.ndarray):
        ref = np.asarray(reference, dtype=np.float64)
        self.mean = np.nanmean(ref, axis=0)
        std = np.nanstd(ref, axis=0)
        self.std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
        self.mean = np.where(np.isfinite(self.mean), self.mean, 0.0)

    def transform(self, x: np.ndarray) -> np.ndarray:
        out = (np.asarray(x, dtype=np.float64) - self.mean) / self.std
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def coverage(
    gen_struct: np.ndarray,
    gen_comp: np.ndarray,
    ref_struct: np.ndarray,
    ref_comp: np.ndarray,
    *,
    struct_cutoff: float = 0.4,
    comp_cutoff: float = 10.0,
    n_generated: int | None = None,
    scaler: CompositionScaler | None = None,
) -> Coverage:
    """COV-R and COV-P of generated fingerprints against reference fingerprints.

    Distances are Euclidean, structure (CrystalNN) and composition (Magpie, standardised with
    ``scaler``, default fitted on ``ref_comp``) separately. As in CDVAE, a reference crystal
    is covered when its nearest generated structure fingerprint *and* its nearest generated
    composition fingerprint are within the cut-offs (nearest taken separately), and precision
    is the mirror image over generated crystals. MP-20 cut-offs: 0.4 and 10.

    Args:
        gen_struct, gen_comp: (n, d) fingerprints of generated crystals that have them.
        ref_struct, ref_comp: (m, d) fingerprints of the reference crystals.
        n_generated: all generated crystals, including those without a fingerprint (default n).
    """
    gen_struct, gen_comp = np.atleast_2d(gen_struct), np.atleast_2d(gen_comp)
    ref_struct, ref_comp = np.atleast_2d(ref_struct), np.atleast_2d(ref_comp)
    n_fp, n_ref = len(gen_struct), len(ref_struct)
    n_generated = n_fp if n_generated is None else n_generated
    if n_fp == 0 or n_ref == 0:
        return Coverage(0.0, 0.0, struct_cutoff, comp_cutoff, n_generated, n_fp, n_ref)
    scaler = scaler or CompositionScaler(ref_comp)
    d_struct = cdist(gen_struct, ref_struct)
    d_comp = cdist(scaler.transform(gen_comp), scaler.transform(ref_comp))
    recall = np.mean((d_struct.min(axis=0) <= struct_cutoff) & (d_comp.min(axis=0) <= comp_cutoff))
    hits = np.sum((d_struct.min(axis=1) <= struct_cutoff) & (d_comp.min(axis=1) <= comp_cutoff))
    precision = hits / n_generated if n_generated else 0.0
    return Coverage(
        float(recall), float(precision), struct_cutoff, comp_cutoff, n_generated, n_fp, n_ref
    )


# --------------------------------------------------------------------------------------------
# Distribution distances and uniqueness
# --------------------------------------------------------------------------------------------


def density_wasserstein(generated: Sequence[Structure], reference: Sequence[Structure]) -> float:
    """Wasserstein-1 distance between the densities (g/cm³) of two sets of crystals."""
    return property_wasserstein([s.density for s in generated], [s.density for s in reference])


def element_count_wasserstein(
    generated: Sequence[Structure], reference: Sequence[Structure]
) -> float:
    """Wasserstein-1 distance between the numbers of distinct elements per crystal."""
    return property_wasserstein(
        [len(s.composition.elements) for s in generated],
        [len(s.composition.elements) for s in reference],
    )


def property_wasserstein(generated: Sequence[float], reference: Sequence[float]) -> float:
    """Wasserstein-1 distance of two samples of a scalar (NaN when either is empty)."""
    if len(generated) == 0 or len(reference) == 0:
        return float("nan")
    return float(wasserstein_distance(np.asarray(generated), np.asarray(reference)))


def unique_mask(structures: Sequence[Structure], matcher=None) -> np.ndarray:
    """True for the first crystal of every group of StructureMatcher-equivalent crystals.

    Crystals are only compared within the same reduced formula (a match needs equal
    compositions up to scale), which keeps this near-linear in practice.
    """
    matcher = matcher or StructureMatcher()
    keep = np.zeros(len(structures), dtype=bool)
    representatives: dict[str, list[Structure]] = {}
    for i, s in enumerate(structures):
        group = representatives.setdefault(s.composition.reduced_formula, [])
        if not any(matcher.fit(s, other) for other in group):
            group.append(s)
            keep[i] = True
    return keep
