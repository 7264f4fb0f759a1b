"""Structure and composition fingerprints (matminer), the one home for every featurizer.

Three protocols use them and each needs a slightly different vector, so each has its own
function here rather than ad-hoc featurizer objects in each metric:

* COV-R / COV-P (CDVAE, Xie et al. 2022): the *mean over sites* of matminer's
  ``CrystalNNFingerprint.from_preset("ops")`` (61 numbers in [0, 1]) and the Magpie
  ``ElementProperty`` vector of the composition (132 numbers, standardised before distances).
* CSP distances (Wei et al. 2024): ``SiteStatsFingerprint`` of the same CrystalNN fingerprint
  with the statistics mean, std, min, max (244 numbers), and the Orbital Field Matrix averaged
  over sites (1024 numbers).
* the band-gap instrument (:mod:`~pccd.evaluate.band_gap`): the same Magpie vector plus
  matminer's ``DensityFeatures`` (density, volume per atom, packing fraction).

matminer is an optional dependency (``pip install "pccd[eval]"``); it is imported on first use
so that ``import pccd.evaluate`` stays fast and works without it. Featurizers are built once
per process (building the CrystalNN 'ops' preset costs ~50 ms).
"""

from __future__ import annotations

import warnings
from functools import cache
from typing import Any

import numpy as np
from pymatgen.core import Composition, Structure

EVAL_EXTRA_HINT = 'install the evaluation extra: pip install -e ".[eval]"'


def _import_matminer() -> Any:
    try:
        import matminer  # optional extra: eval
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"matminer is needed for fingerprints; {EVAL_EXTRA_HINT}") from exc
    return matminer


def require_matminer() -> None:
    """Raise ``ImportError`` (with the install hint) when matminer is missing.

    For callers that skip an optional measurement up front rather than fail crystal by crystal.
    """
    _import_matminer()


@cache
def _crystalnn_site_featurizer():
    _import_matminer()
    from matminer.featurizers.site.fingerprint import CrystalNNFingerprint  # optional extra: eval

    return CrystalNNFingerprint.from_preset("ops")


@cache
def _crystalnn_stats_featurizer():
    _import_matminer()
    from matminer.featurizers.structure.sites import SiteStatsFingerprint  # optional extra: eval

    return SiteStatsFingerprint.from_preset("CrystalNNFingerprint_ops")


@cache
def _magpie_featurizer():
    _import_matminer()
    from matminer.featurizers.composition.composite import ElementProperty  # optional extra: eval

    return ElementProperty.from_preset("magpie")


@cache
def _density_featurizer():
    _import_matminer()
    from matminer.featurizers.structure.order import DensityFeatures  # optional extra: eval

    return DensityFeatures()


@cache
def _ofm_featurizer():
    _import_matminer()
    from matminer.featurizers.structure.matrix import OrbitalFieldMatrix  # optional extra: eval

    with warnings.catch_warnings():  # it builds np.matrix objects (a PendingDeprecation)
        warnings.simplefilter("ignore")
        return OrbitalFieldMatrix(period_tag=False, flatten=True)


def _quiet(fn, *args) -> np.ndarray:
    # matminer/pymatgen warn about missing radii or electronegativities for every site; the
    # values are still defined (NaN-safe) and the warnings would drown progress output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(fn(*args), dtype=np.float64)


def crystalnn_fingerprint(structure: Structure) -> np.ndarray:
    """CDVAE's structure fingerprint: the mean over sites of CrystalNN 'ops' (61 numbers).

    Raises whatever matminer raises for a structure it cannot handle; callers record that as
    a missing fingerprint with the reason.
    """
    featurizer = _crystalnn_site_featurizer()
    sites = [_quiet(featurizer.featurize, structure, i) for i in range(len(structure))]
    return np.mean(sites, axis=0)


def crystalnn_stats_fingerprint(structure: Structure) -> np.ndarray:
    """``SiteStatsFingerprint`` (mean, std, min, max over sites) of CrystalNN 'ops' (244)."""
    return _quiet(_crystalnn_stats_featurizer().featurize, structure)


def magpie_fingerprint(composition: Composition | Structure) -> np.ndarray:
    """Magpie element-property statistics of a composition (132 numbers, unscaled)."""
    if isinstance(composition, Structure):
        composition = composition.composition
    return _quiet(_magpie_featurizer().featurize, composition)


def density_features(structure: Structure) -> np.ndarray:
    """Density (g/cm³), volume per atom (Å³) and packing fraction (3 numbers, cheap).

    The packing fraction needs atomic radii, which pymatgen lacks for He, Ne, Kr and Xe
    (matminer then raises TypeError); such a crystal keeps its density and volume per atom
    and gets NaN for the packing fraction rather than no features at all.
    """
    try:
        return _quiet(_density_featurizer().featurize, structure)
    except TypeError:
        return np.array([structure.density, structure.volume / len(structure), np.nan])


def orbital_field_matrix(structure: Structure) -> np.ndarray:
    """Orbital Field Matrix averaged over sites, flattened (1024 numbers)."""
    return _quiet(_ofm_featurizer().featurize, structure)
