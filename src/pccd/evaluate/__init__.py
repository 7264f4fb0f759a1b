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

import importlib

_HOMES = {
    "METRICS": "csp_distances",
    "CSPDistances": "csp_distances",
    "Distance": "csp_distances",
    "graph_edit_distance": "csp_distances",
    "superpose_distance": "csp_distances",
    "CompositionScaler": "generation_metrics",
    "Coverage": "generation_metrics",
    "atom_count_wasserstein": "generation_metrics",
    "coverage": "generation_metrics",
    "density_wasserstein": "generation_metrics",
    "element_count_wasserstein": "generation_metrics",
    "has_exact_elements": "generation_metrics",
    "is_compositionally_valid": "generation_metrics",
    "is_structurally_valid": "generation_metrics",
    "min_interatomic_distance": "generation_metrics",
    "property_wasserstein": "generation_metrics",
    "request_quality": "generation_metrics",
    "unique_mask": "generation_metrics",
    "AtomMatch": "matching",
    "PairComparison": "matching",
    "compare_structures": "matching",
    "effective_rate": "matching",
    "greedy_periodic_match": "matching",
    "periodic_difference": "matching",
    "plain_rate": "matching",
    "whisker_bounds": "matching",
    "ReferenceIndex": "novelty",
}
"""Where each name of :data:`__all__` lives: imported on first use (PEP 562), so that
importing one leaf module (``pccd.evaluate.geometry``, which every run uses) does not
load the matcher, scipy.stats and pandas of the others: 1.3 s of each ``pccd generate``."""


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"pccd.evaluate.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_HOMES)
