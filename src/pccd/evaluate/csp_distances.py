"""Distances between a predicted and a true crystal (Wei et al., Comput. Mater. Sci. 235, 112802,
2024; the PCCD paper's Fig. 2).

Each metric answers "how far is this prediction from the truth" in its own currency:

=================  ==========================================================  ==========
name               definition                                                  unit
=================  ==========================================================  ==========
``energy``         |E/atom(pred) − E/atom(true)|, MLIP single point (CHGNet)    eV/atom
``ofm``            ‖OFM(pred) − OFM(true)‖₂, site-averaged Orbital Field Matrix  —
``crystalnn``      ‖FP(pred) − FP(true)‖₂, SiteStatsFingerprint of CrystalNN     —
``superpose``      RMSD of matched atoms after the best rotation + translation    Å
``rms``            StructureMatcher(ltol=0.6, stol=0.6, angle_tol=20) RMS         (V/N)^⅓
``rms_anonymous``  the same with species ignored                                 (V/N)^⅓
``graph_edit``     edit distance of the neighbour graphs (edges ≤ 2.5 Å)          edits
=================  ==========================================================  ==========

Energies are per atom (as in Wei et al., whose M3GNet model predicts per-atom formation
energies) so that pairs with different atom counts stay comparable.

A metric that cannot be computed for a pair (no match within the tolerances, different
compositions for ``superpose``, a featurizer error, ...) is a :class:`Distance` with
``value=None`` and the reason; it is never reported as 0, which would read as "perfect".
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from scipy.optimize import linear_sum_assignment

from pccd.errors import InputError
from pccd.evaluate import fingerprints
from pccd.evaluate.matching import periodic_difference
from pccd.mlip import MLIP

METRICS = ("energy", "ofm", "crystalnn", "superpose", "rms", "rms_anonymous", "graph_edit")
"""Every distance, in report order."""

UNITS = {
    "energy": "eV/atom",
    "ofm": "OFM units",
    "crystalnn": "fingerprint units",
    "superpose": "Å",
    "rms": "(V/N)^(1/3)",
    "rms_anonymous": "(V/N)^(1/3)",
    "graph_edit": "edit operations",
}
"""Unit of each metric, for tables and axis labels."""


@dataclass(frozen=True)
class Distance:
    """One metric for one pair: a value, or ``None`` and the reason it is missing.

    ``note`` qualifies a value (e.g. a graph edit distance that is an upper bound because the
    search hit its time limit).
    """

    value: float | None
    reason: str = ""
    note: str = ""

    @property
    def missing(self) -> bool:
        return self.value is None


class MetricUnavailable(Exception):
    """Raised inside a metric when it does not apply to a pair; the message is the reason."""


# --------------------------------------------------------------------------------------------
# Metrics that need no model
# --------------------------------------------------------------------------------------------


def _kabsch_rmsd(p: np.ndarray, q: np.ndarray) -> float:
    """RMSD between point sets ``p`` and ``q`` (N, 3) after the best rotation + translation."""
    p = p - p.mean(axis=0)
    q = q - q.mean(axis=0)
    u, _, vt = np.linalg.svd(q.T @ p)
    d = np.sign(np.linalg.det(u @ vt))  # proper rotation, no reflection
    rot = u @ np.diag([1.0, 1.0, d]) @ vt
    diff = q @ rot - p
    return float(np.sqrt(np.mean(np.sum(diff**2, axis=1))))


def superpose_distance(pred: Structure, true: Structure) -> float:
    """Point-set RMSD (Å) of the two crystals' atoms after the best superposition.

    Atoms are paired one to one per element (Hungarian assignment on minimum-image distances
    in the true lattice, trying each same-element origin shift); each predicted atom is taken
    at the periodic image nearest its partner, converted to Cartesian coordinates *in its own
    lattice*, and the two point sets are superposed by a rotation + translation (Kabsch).
    So a shifted or permuted copy gives 0 and a strained cell gives the strain's displacement.

    Raises:
        MetricUnavailable: the compositions differ (no one-to-one pairing exists).
    """
    if pred.composition != true.composition:
        raise MetricUnavailable(
            f"compositions differ ({pred.composition.formula} vs {true.composition.formula})"
        )
    tf, tz = true.frac_coords, np.array(true.atomic_numbers)
    pf, pz = pred.frac_coords, np.array(pred.atomic_numbers)
    values, counts = np.unique(tz, return_counts=True)
    anchor = values[np.argmin(counts)]
    i0 = int(np.flatnonzero(tz == anchor)[0])
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for j0 in np.flatnonzero(pz == anchor):
        shifted = pf + periodic_difference(tf[i0], pf[j0])
        pairs = np.empty(len(tz), dtype=np.int64)
        total = 0.0
        for z in values:
            ti, pj = np.flatnonzero(tz == z), np.flatnonzero(pz == z)
            cost = true.lattice.get_all_distances(tf[ti], shifted[pj]) ** 2
            r, c = linear_sum_assignment(cost)
            pairs[ti[r]] = pj[c]
            total += float(cost[r, c].sum())
        if best is None or total < best[0]:
            best = (total, shifted, pairs)
    assert best is not None
    _, shifted, pairs = best
    # the predicted atom's image nearest its partner, in the predicted lattice's Cartesian frame
    nearest = tf + periodic_difference(shifted[pairs], tf)
    p_cart = true.lattice.get_cartesian_coords(tf)
    q_cart = pred.lattice.get_cartesian_coords(nearest)
    return _kabsch_rmsd(p_cart, q_cart)


def neighbour_graph(structure: Structure, cutoff: float = 2.5) -> Any:
    """networkx ``Graph``: one node per site (attribute ``z``), an edge between two sites when
    any periodic images are within ``cutoff`` Å (no self-loops)."""
    import networkx as nx  # optional extra: eval

    graph = nx.Graph()
    for i, site in enumerate(structure):
        graph.add_node(i, z=site.specie.Z)
    if len(structure) > 1:
        centers, neighbours, _, _ = structure.get_neighbor_list(cutoff)
        for a, b in zip(centers.tolist(), neighbours.tolist(), strict=True):
            if a != b:
                graph.add_edge(a, b)
    return graph


def graph_edit_distance(
    pred: Structure, true: Structure, *, cutoff: float = 2.5, timeout: float = 2.0
) -> tuple[float, bool]:
    """Graph edit distance of the neighbour graphs (unit costs; nodes match on element).

    Returns ``(distance, exact)``; ``exact`` is False when the search hit ``timeout`` seconds
    and the value is the best upper bound found by then.

    Raises:
        MetricUnavailable: no edit path was found within the time limit.
    """
    import networkx as nx  # optional extra: eval

    g1, g2 = neighbour_graph(pred, cutoff), neighbour_graph(true, cutoff)

    def same_element(a: dict, b: dict) -> bool:
        return a["z"] == b["z"]

    # isomorphic graphs (e.g. a permuted copy) have distance 0; VF2 proves it in milliseconds
    # where the edit-path search can exhaust its time limit on 16 relabelled nodes
    if nx.is_isomorphic(g1, g2, node_match=same_element):
        return 0.0, True
    t0 = time.perf_counter()
    value = nx.graph_edit_distance(g1, g2, node_match=same_element, timeout=timeout)
    elapsed = time.perf_counter() - t0
    if value is None:
        raise MetricUnavailable(f"no edit path found within {timeout:g} s")
    return float(value), elapsed < timeout


# --------------------------------------------------------------------------------------------
# The calculator
# --------------------------------------------------------------------------------------------


class CSPDistances:
    """Computes the CSP distances of (predicted, true) pairs; holds the models and tolerances.

    Args:
        metrics: which of :data:`METRICS` to compute.
        ged_cutoff: neighbour-graph cut-off in Å for ``graph_edit``.
        ged_timeout: seconds per pair for the graph-edit search.
        matcher_tolerances: ``StructureMatcher`` tolerances for ``rms`` / ``rms_anonymous``
            (Wei et al.: ltol 0.6, stol 0.6, angle_tol 20°).
        mlip: the MLIP for the ``energy`` distance (name as in :mod:`pccd.mlip`:
            ``"chgnet"``, ``"7net-0"`` or ``"module:factory"``); loaded on first use.

    Example::

        calc = CSPDistances()
        calc(pred, true)["rms"].value
    """

    def __init__(
        self,
        metrics: Sequence[str] = METRICS,
        *,
        ged_cutoff: float = 2.5,
        ged_timeout: float = 2.0,
        matcher_tolerances: dict[str, float] | None = None,
        mlip: str = "chgnet",
    ):
        unknown = set(metrics) - set(METRICS)
        if unknown:
            raise InputError(f"unknown distance metric(s) {sorted(unknown)}; choose from {METRICS}")
        self.metrics = tuple(m for m in METRICS if m in metrics)
        self.ged_cutoff = ged_cutoff
        self.ged_timeout = ged_timeout
        self.matcher_tolerances = matcher_tolerances or {"ltol": 0.6, "stol": 0.6, "angle_tol": 20}
        self.mlip_name = mlip
        self._mlip = None
        self._matcher = None

    # ------------------------------------------------------------------ helpers
    @property
    def matcher(self):
        if self._matcher is None:
            self._matcher = StructureMatcher(**self.matcher_tolerances)
        return self._matcher

    def energy_per_atom(self, structure: Structure) -> float:
        """MLIP single-point energy in eV/atom on the MP2020 scale (the screening oracle's)."""
        if self._mlip is None:
            self._mlip = MLIP(self.mlip_name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return self._mlip.energy_per_atom(structure)
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise MetricUnavailable(str(exc)) from exc

    # ------------------------------------------------------------------ metrics
    def energy(self, pred: Structure, true: Structure) -> float:
        return abs(self.energy_per_atom(pred) - self.energy_per_atom(true))

    def ofm(self, pred: Structure, true: Structure) -> float:
        a = fingerprints.orbital_field_matrix(pred)
        b = fingerprints.orbital_field_matrix(true)
        return _finite_norm(a - b, "OFM")

    def crystalnn(self, pred: Structure, true: Structure) -> float:
        a = fingerprints.crystalnn_stats_fingerprint(pred)
        b = fingerprints.crystalnn_stats_fingerprint(true)
        return _finite_norm(a - b, "CrystalNN fingerprint")

    def superpose(self, pred: Structure, true: Structure) -> float:
        return superpose_distance(pred, true)

    def rms(self, pred: Structure, true: Structure) -> float:
        out = self.matcher.get_rms_dist(pred, true)
        if out is None:
            raise MetricUnavailable(f"no StructureMatcher match ({self._tol_text()})")
        return float(out[0])

    def rms_anonymous(self, pred: Structure, true: Structure) -> float:
        rms, _ = self.matcher.get_rms_anonymous(pred, true)
        if rms is None:
            raise MetricUnavailable(f"no anonymous StructureMatcher match ({self._tol_text()})")
        return float(rms)

    def _tol_text(self) -> str:
        return ", ".join(f"{k}={v:g}" for k, v in self.matcher_tolerances.items())

    def __call__(self, pred: Structure | None, true: Structure) -> dict[str, Distance]:
        """All configured metrics for one pair; ``pred=None`` (not decoded) → all missing."""
        out: dict[str, Distance] = {}
        for name in self.metrics:
            if pred is None:
                out[name] = Distance(None, "prediction did not decode")
                continue
            try:
                if name == "graph_edit":
                    value, exact = graph_edit_distance(
                        pred, true, cutoff=self.ged_cutoff, timeout=self.ged_timeout
                    )
                    note = (
                        "" if exact else f"upper bound (search stopped at {self.ged_timeout:g} s)"
                    )
                    out[name] = Distance(value, note=note)
                else:
                    out[name] = Distance(float(getattr(self, name)(pred, true)))
            except MetricUnavailable as exc:
                out[name] = Distance(None, str(exc))
            except Exception as exc:  # a featurizer/model failure is a missing value, not a crash
                out[name] = Distance(None, f"{type(exc).__name__}: {exc}"[:200])
        return out


def _finite_norm(diff: np.ndarray, what: str) -> float:
    if not np.all(np.isfinite(diff)):
        raise MetricUnavailable(f"{what} has non-finite entries")
    return float(np.linalg.norm(diff))
