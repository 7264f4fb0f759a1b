"""Evaluation of generated and reconstructed crystals (metrics that take pymatgen Structures).

One module per concept:

* :mod:`~pccd.evaluate.matching` — periodic differences, greedy one-to-one atom matching,
  effective (inside-whiskers) and plain rates;
* :mod:`~pccd.evaluate.csp_distances` — CSP distances of a (predicted, true) pair;
* :mod:`~pccd.evaluate.generation_metrics` — validity, coverage, Wasserstein, uniqueness;
* :mod:`~pccd.evaluate.fingerprints` — matminer featurizers; :mod:`~pccd.evaluate.novelty` —
  known-crystal look-up by formula;
* :mod:`~pccd.evaluate.geometry` — plausibility of raw samples; :mod:`~pccd.evaluate.band_gap`
  — the shipped band-gap instrument (metal or not, PBE gap) and its readings over a sample set;
* :mod:`~pccd.evaluate.denovo` — scoring a directory of CIFs;
* :mod:`~pccd.evaluate.plots`, :mod:`~pccd.evaluate.report` — PNG figures, metrics.json and
  report.md.

matminer, smact and chgnet (the ``eval`` extra) are imported only by the functions that need
them, so this package imports without them. Nothing here runs a model: the experiments that
do (the CSP benchmark, the reconstruction experiment) are in :mod:`pccd.experiments`.
"""

from pccd.evaluate.csp_distances import (
    METRICS,
    CSPDistances,
    Distance,
    graph_edit_distance,
    superpose_distance,
)
from pccd.evaluate.generation_metrics import (
    CompositionScaler,
    Coverage,
    atom_count_wasserstein,
    coverage,
    density_wasserstein,
    element_count_wasserstein,
    has_exact_elements,
    is_compositionally_valid,
    is_structurally_valid,
    min_interatomic_distance,
    property_wasserstein,
    request_quality,
    unique_mask,
)
from pccd.evaluate.matching import (
    AtomMatch,
    PairComparison,
    compare_structures,
    effective_rate,
    greedy_periodic_match,
    periodic_difference,
    plain_rate,
    whisker_bounds,
)
from pccd.evaluate.novelty import ReferenceIndex

__all__ = [
    "METRICS",
    "AtomMatch",
    "CSPDistances",
    "CompositionScaler",
    "Coverage",
    "Distance",
    "PairComparison",
    "ReferenceIndex",
    "atom_count_wasserstein",
    "compare_structures",
    "coverage",
    "density_wasserstein",
    "effective_rate",
    "element_count_wasserstein",
    "graph_edit_distance",
    "greedy_periodic_match",
    "has_exact_elements",
    "is_compositionally_valid",
    "is_structurally_valid",
    "min_interatomic_distance",
    "periodic_difference",
    "plain_rate",
    "property_wasserstein",
    "request_quality",
    "superpose_distance",
    "unique_mask",
    "whisker_bounds",
]
