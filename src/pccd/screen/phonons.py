"""Harmonic phonons of chosen candidates: is the crystal a minimum, not a saddle point?

A low energy above the hull says a composition is competitive; it does not say the structure is
a local minimum. The paper therefore computed phonons for the candidates it highlighted
(Ca2SnO4, LiMg6, MgSc2O4) and called them *dynamically stable* because no imaginary mode
appeared away from Γ. We reproduce that check with the screening MLIP instead of DFT:

1. the structure is standardised to the seekpath primitive cell, so the band path (given by
   seekpath in the reciprocal basis of *that* cell) and the force constants share one basis;
2. phonopy displaces atoms in a diagonal supercell whose perpendicular widths are all at least
   ``min_length`` (10 Å by default) and the MLIP supplies the forces;
3. frequencies are evaluated along the seekpath band path and on a Γ-centred mesh; phonopy
   reports imaginary frequencies as negative numbers.

The structure is used as given: relax it with the same MLIP first (another module does that).
Phonons of an unrelaxed structure are meaningless, and relaxing here would hide which geometry
was judged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pymatgen.core import Lattice, Structure

from pccd.mlip import EVAL_ERRORS, MLIP

#: Tolerance (Å) for finding the symmetry used by seekpath and phonopy. Looser than phonopy's
#: 1e-5 because MLIP-relaxed candidates keep their symmetry only to ~1e-4 Å; a cell found to be
#: lower-symmetry than it is would need more displacements and get a needlessly long band path.
DEFAULT_SYMPREC = 1e-3


class PhononError(ValueError):
    """Phonons cannot be computed for a structure (MLIP failure, non-finite forces, ...)."""


def supercell_matrix(structure: Structure | Lattice, min_length: float = 10.0) -> np.ndarray:
    """Diagonal supercell multipliers giving every perpendicular width ≥ ``min_length``.

    The width along ``a`` is the distance between the two cell faces spanned by ``b`` and ``c``,
    ``V / |b × c|``. In a skewed cell it is shorter than ``|a|``, and it is the width, not the
    lattice length, that bounds how close a displaced atom comes to its own periodic images: a
    cell whose widths are all ≥ L contains a sphere of diameter L and no lattice vector shorter
    than L. Using ``|a|`` would under-size supercells of oblique cells (e.g. a primitive fcc cell
    of Cu has |a| = 2.55 Å but a width of only 2.08 Å).

    Returns:
        A 3×3 integer diagonal matrix (phonopy's ``supercell_matrix``).
    """
    lattice = structure.lattice if isinstance(structure, Structure) else structure
    a, b, c = np.asarray(lattice.matrix, dtype=float)
    volume = abs(float(np.dot(a, np.cross(b, c))))
    widths = [volume / np.linalg.norm(np.cross(u, v)) for u, v in ((b, c), (c, a), (a, b))]
    # the small tolerance keeps an exact fit (width * n == min_length) from rounding up
    multipliers = [max(1, math.ceil(min_length / width - 1e-8)) for width in widths]
    return np.diag(multipliers).astype(int)


@dataclass
class BandStructure:
    """Frequencies along the seekpath band path, split where the path jumps.

    ``distances[i]`` (1/Å, without 2π) and ``frequencies[i]`` (THz, shape ``(n_q, n_modes)``)
    belong to the i-th continuous segment; ``qpoints[i]`` are reduced coordinates of the
    standardised primitive cell. Ticks mark high-symmetry points; ``"X|U"`` marks a jump.
    """

    distances: list[np.ndarray]
    frequencies: list[np.ndarray]
    qpoints: list[np.ndarray]
    tick_positions: list[float]
    tick_labels: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "distances": [np.round(d, 5).tolist() for d in self.distances],
            "frequencies": [np.round(f, 4).tolist() for f in self.frequencies],
            "qpoints": [np.round(q, 5).tolist() for q in self.qpoints],
            "tick_positions": [round(float(t), 5) for t in self.tick_positions],
            "tick_labels": list(self.tick_labels),
        }


@dataclass
class PhononResult:
    """Outcome of a finite-displacement phonon calculation with an MLIP.

    Attributes:
        formula: reduced formula of the structure.
        mlip: name of the MLIP that gave the forces.
        supercell: diagonal multipliers of the standardised primitive cell.
        n_atoms_supercell: atoms in each displaced supercell.
        n_displacements: symmetry-distinct displacements (MLIP calls = this + 1).
        min_frequency_thz: lowest frequency anywhere on the band path and mesh (Γ included).
        min_frequency_off_gamma_thz: lowest frequency that counts for the verdict: all modes
            farther than ``gamma_radius`` from Γ, and near Γ all but the three acoustic modes.
        q_min_off_gamma: reduced q-point of ``min_frequency_off_gamma_thz``.
        threshold_thz: frequencies below this count as imaginary.
        stable: no counted frequency below ``threshold_thz``.
        verdict: ``"dynamically stable"`` or ``"dynamically unstable: ..."``.
        band_structure: frequencies along the seekpath path, for plotting.
        seconds: wall time of the whole calculation.
    """

    formula: str
    mlip: str
    supercell: tuple[int, int, int]
    n_atoms_supercell: int
    n_displacements: int
    min_frequency_thz: float
    min_frequency_off_gamma_thz: float
    q_min_off_gamma: tuple[float, float, float]
    threshold_thz: float
    stable: bool
    verdict: str
    band_structure: BandStructure = field(repr=False)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (lists, floats, str, bool)."""
        return {
            "formula": self.formula,
            "mlip": self.mlip,
            "supercell": list(self.supercell),
            "n_atoms_supercell": self.n_atoms_supercell,
            "n_displacements": self.n_displacements,
            "min_frequency_thz": round(self.min_frequency_thz, 4),
            "min_frequency_off_gamma_thz": round(self.min_frequency_off_gamma_thz, 4),
            "q_min_off_gamma": [round(q, 5) for q in self.q_min_off_gamma],
            "threshold_thz": self.threshold_thz,
            "stable": self.stable,
            "verdict": self.verdict,
            "band_structure": self.band_structure.to_dict(),
            "seconds": round(self.seconds, 2),
        }


def _standard_primitive(structure: Structure, symprec: float) -> tuple[Structure, dict]:
    """The seekpath primitive cell and its band path (coordinates in that cell's basis).

    seekpath's high-symmetry points refer to its own standardised (possibly rotated) primitive
    cell, so phonons are computed on exactly that cell rather than converting q-points.
    """
    import seekpath  # optional extra: screen

    cell = (
        structure.lattice.matrix,
        structure.frac_coords,
        [site.specie.Z for site in structure],
    )
    path = seekpath.get_path(cell, with_time_reversal=True, symprec=symprec)
    primitive = Structure(
        Lattice(path["primitive_lattice"]),
        [int(z) for z in path["primitive_types"]],
        path["primitive_positions"],
    )
    return primitive, path


def _plain_label(label: str) -> str:
    """seekpath label as text (``GAMMA`` -> ``Γ``)."""
    return "Γ" if label == "GAMMA" else label


def _pretty_label(label: str) -> str:
    """seekpath label for a matplotlib tick (``X_1`` -> X with subscript 1)."""
    base, _, sub = _plain_label(label).partition("_")
    return f"{base}$_{{{sub}}}$" if sub else base


def _band_path(
    path: dict, reciprocal: np.ndarray, points_per_segment: int
) -> tuple[list[np.ndarray], list[float], list[str], list[np.ndarray]]:
    """Sample each seekpath segment with a spacing set by the longest segment.

    Returns q-points per continuous segment, tick positions, tick labels and cumulative
    distances (1/Å) per continuous segment. Distances do not advance across a jump.
    """
    coords = {name: np.asarray(q, dtype=float) for name, q in path["point_coords"].items()}
    segments = [(start, end) for start, end in path["path"]]
    lengths = [float(np.linalg.norm((coords[e] - coords[s]) @ reciprocal)) for s, e in segments]
    spacing = max(lengths) / max(points_per_segment - 1, 1)

    qpoints: list[np.ndarray] = []
    distances: list[np.ndarray] = []
    ticks: list[float] = []
    labels: list[str] = []
    position = 0.0
    previous_end: str | None = None
    for (start, end), length in zip(segments, lengths, strict=True):
        n = max(2, round(length / spacing) + 1)
        t = np.linspace(0.0, 1.0, n)
        q = coords[start] + t[:, None] * (coords[end] - coords[start])
        d = position + t * length
        if previous_end == start:  # continuous: extend the current piece
            qpoints[-1] = np.vstack([qpoints[-1], q[1:]])
            distances[-1] = np.concatenate([distances[-1], d[1:]])
        else:
            if previous_end is not None:
                labels[-1] = f"{labels[-1]}|{_pretty_label(start)}"
            else:
                ticks.append(position)
                labels.append(_pretty_label(start))
            qpoints.append(q)
            distances.append(d)
        position += length
        ticks.append(position)
        labels.append(_pretty_label(end))
        previous_end = end
    return qpoints, ticks, labels, distances


def _counted_minimum(
    qpoints: np.ndarray, frequencies: np.ndarray, gamma_radius: float
) -> tuple[float, np.ndarray]:
    """Lowest frequency that counts for the verdict, and where it occurs.

    Within ``gamma_radius`` of Γ the acoustic branches go to zero and numerical noise (finite
    supercell, imperfect sum rule) can push them slightly negative; those three modes — the
    ones closest to zero — are ignored there. Optical modes near Γ still count, so a soft
    polar mode at Γ is not mistaken for acoustic noise.
    """
    wrapped = qpoints - np.rint(qpoints)
    near_gamma = np.linalg.norm(wrapped, axis=1) < gamma_radius
    counted = frequencies.astype(float).copy()
    if near_gamma.any():
        n_ignore = min(3, counted.shape[1])
        acoustic = np.argsort(np.abs(counted[near_gamma]), axis=1)[:, :n_ignore]
        block = counted[near_gamma]
        np.put_along_axis(block, acoustic, np.inf, axis=1)
        counted[near_gamma] = block
    per_q = counted.min(axis=1)
    index = int(np.argmin(per_q))
    return float(per_q[index]), qpoints[index]


def _forces(mlip: MLIP, cells: Sequence[Any], formula: str) -> np.ndarray:
    """MLIP forces (eV/Å) on phonopy supercells, checked for NaN/inf."""
    calculator = mlip.calculator
    out = []
    for cell in cells:
        atoms = Atoms(
            symbols=list(cell.symbols),
            cell=np.asarray(cell.cell),
            scaled_positions=np.asarray(cell.scaled_positions),
            pbc=True,
        )
        atoms.calc = calculator
        try:
            forces = np.asarray(atoms.get_forces(), dtype=float)
        except EVAL_ERRORS as exc:  # MLIPError is a RuntimeError
            raise PhononError(f"{mlip.name} cannot compute forces for {formula}: {exc}") from exc
        if forces.shape != (len(atoms), 3) or not np.isfinite(forces).all():
            raise PhononError(f"{mlip.name} returned non-finite forces for {formula}")
        out.append(forces)
    return np.asarray(out)


def compute_phonons(
    structure: Structure,
    mlip: MLIP,
    min_length: float = 10.0,
    displacement: float = 0.01,
    threshold_thz: float = -0.1,
    gamma_radius: float = 0.05,
    mesh: float | Sequence[int] = 20.0,
    points_per_segment: int = 51,
    symprec: float = DEFAULT_SYMPREC,
) -> PhononResult:
    """Finite-displacement phonons of a (relaxed) structure with ``mlip`` forces.

    Args:
        structure: an ordered, already relaxed structure (relax it with the same MLIP: residual
            forces are subtracted, but a strained cell still gives strained phonons).
        mlip: the potential supplying forces.
        min_length: minimum perpendicular width (Å) of the supercell, see
            :func:`supercell_matrix`; 10 Å follows the paper.
        displacement: atomic displacement (Å); 0.01 Å is phonopy's default, small enough to stay
            harmonic, large enough for MLIP force noise.
        threshold_thz: frequencies below this count as imaginary. -0.1 THz is the paper's
            tolerance for numerical noise.
        gamma_radius: radius around Γ, in reduced reciprocal coordinates (fractions of the
            reciprocal lattice vectors of the primitive cell), where acoustic modes are ignored.
        mesh: Γ-centred sampling mesh for the stability check: three integers, or a length (Å)
            from which phonopy picks ``round(length * |b_i|)`` divisions.
        points_per_segment: q-points on the longest band-path segment (others scale with length).
        symprec: symmetry tolerance (Å) for seekpath and phonopy.

    Raises:
        PhononError: disordered structure, MLIP failure or non-finite forces.
    """
    # optional extra: screen (pymatgen.io.phonopy imports phonopy too)
    from phonopy import Phonopy
    from pymatgen.io.phonopy import get_phonopy_structure

    start_time = time.perf_counter()
    formula = structure.composition.reduced_formula
    if not structure.is_ordered:
        raise PhononError(f"{formula}: phonons need an ordered structure (partial occupancies)")

    primitive, path = _standard_primitive(structure, symprec)
    multipliers = supercell_matrix(primitive, min_length)
    phonon = Phonopy(
        get_phonopy_structure(primitive),
        supercell_matrix=multipliers,
        primitive_matrix=None,
        symprec=symprec,
        log_level=0,
    )
    phonon.generate_displacements(distance=displacement)
    displaced = phonon.supercells_with_displacements
    # forces of the undisplaced supercell are subtracted: a not-quite-relaxed structure (or MLIP
    # noise) would otherwise add a constant force that masquerades as a force constant
    forces = _forces(mlip, [phonon.supercell, *displaced], formula)
    phonon.forces = forces[1:] - forces[0]
    phonon.produce_force_constants(fc_calculator="traditional", show_drift=False)
    phonon.symmetrize_force_constants()  # restore the acoustic sum rule broken by force noise

    reciprocal = np.linalg.inv(primitive.lattice.matrix).T  # rows b_i, without 2π
    band_q, ticks, labels, distances = _band_path(path, reciprocal, points_per_segment)
    phonon.run_qpoints(np.vstack(band_q))
    band_freqs = np.asarray(phonon.qpoints.frequencies, dtype=float)
    splits = np.cumsum([len(q) for q in band_q])[:-1]
    bands = BandStructure(
        distances=distances,
        frequencies=np.split(band_freqs, splits),
        qpoints=band_q,
        tick_positions=ticks,
        tick_labels=labels,
    )

    mesh_arg = float(mesh) if isinstance(mesh, int | float) else [int(m) for m in mesh]
    phonon.run_mesh(mesh_arg, is_gamma_center=True, is_mesh_symmetry=True)
    all_q = np.vstack([np.vstack(band_q), np.asarray(phonon.mesh.qpoints, dtype=float)])
    all_f = np.vstack([band_freqs, np.asarray(phonon.mesh.frequencies, dtype=float)])
    if not np.isfinite(all_f).all():
        raise PhononError(f"{formula}: non-finite phonon frequencies from {mlip.name} forces")

    min_off_gamma, q_min = _counted_minimum(all_q, all_f, gamma_radius)
    stable = min_off_gamma >= threshold_thz
    if stable:
        verdict = "dynamically stable"
    else:
        q_text = ", ".join(f"{x:.3f}" for x in q_min)
        name = next(
            (
                _plain_label(k)
                for k, v in path["point_coords"].items()
                if np.allclose((d := np.subtract(v, q_min)) - np.rint(d), 0.0, atol=1e-6)
            ),
            None,
        )
        where = f"q=({q_text})" + (f" [{name}]" if name else "")
        verdict = f"dynamically unstable: imaginary mode of {min_off_gamma:.2f} THz at {where}"

    return PhononResult(
        formula=formula,
        mlip=mlip.name,
        supercell=tuple(int(m) for m in np.diag(multipliers)),
        n_atoms_supercell=len(phonon.supercell),
        n_displacements=len(displaced),
        min_frequency_thz=float(all_f.min()),
        min_frequency_off_gamma_thz=min_off_gamma,
        q_min_off_gamma=tuple(float(x) for x in q_min),
        threshold_thz=threshold_thz,
        stable=bool(stable),
        verdict=verdict,
        band_structure=bands,
        seconds=time.perf_counter() - start_time,
    )


def plot_band_structure(result: PhononResult, path: Path, title: str | None = None) -> Path:
    """Write the phonon band structure as a PNG (imaginary modes drawn below the dashed 0).

    Uses a bare ``Figure`` with the Agg canvas, so no GUI backend or global pyplot state is
    touched (safe in headless batch screening).
    """
    bands = result.band_structure
    fig = Figure(figsize=(7.0, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    color = "tab:blue" if result.stable else "tab:red"
    for distances, frequencies in zip(bands.distances, bands.frequencies, strict=True):
        ax.plot(distances, frequencies, color=color, linewidth=1.0)
    for tick in bands.tick_positions:
        ax.axvline(tick, color="0.6", linewidth=0.6)
    ax.axhline(0.0, color="black", linestyle="--", linewidth=0.8)
    ax.set_xticks(bands.tick_positions, bands.tick_labels)
    ax.set_xlim(bands.tick_positions[0], bands.tick_positions[-1])
    ax.set_ylabel("Frequency (THz)")
    if title is None:
        title = f"{result.formula} ({result.mlip})\n{result.verdict}"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
