"""Relaxation of positions and cell with an MLIP (ASE FIRE + FrechetCellFilter).

Generated crystals are only approximately at a minimum; their E_hull means something only after
relaxation. Relaxations of poor samples can blow up (atoms fly apart, the cell collapses, the
energy becomes NaN): those raise :class:`RelaxationError` with the reason, so a batch screen
records the failure and carries on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from pccd.mlip import EVAL_ERRORS, MLIP, MLIPError

#: volume per atom (Å³) outside which a relaxation is considered to have blown up
VOLUME_PER_ATOM_LIMITS = (2.0, 200.0)


COLLAPSE_FRACTION = 0.5
"""Atoms closer than this fraction of the sum of their atomic radii count as collapsed."""
ENERGY_PER_ATOM_FLOOR = -20.0
"""eV/atom (MP2020 scale) below which a relaxed energy is an MLIP artefact: no Materials Project
phase is below −14.3 (CHGNet reference table), yet SevenNet-0 relaxed a raw Be2Pt sample to
−338 eV/atom without any pair closer than half the radii sum (BENCHMARKS.md, S.U.N. rows)."""
COLLAPSE_CHECK_EVERY = 20
"""Optimizer steps between collapse checks during a relaxation (and once at the end)."""


def collapsed_pair(structure: Structure) -> str | None:
    """Describe the closest pair if two atoms sit closer than half their radii sum, else None.

    MLIPs trained on near-equilibrium data have holes at short range: a relaxation can pull two
    atoms to a fraction of an ångström and report an energy far below any real phase (a
    generated Hf cell collapsed to 0.35 Å "beat" the Hf hull by 0.65 eV/atom). Such a result is
    an artefact of the potential, not a candidate, so it is reported as a failure.
    """
    if len(structure) < 2:
        return None
    radii = np.array([s.specie.atomic_radius or 1.0 for s in structure])
    dist = structure.distance_matrix + np.eye(len(structure)) * 1e9
    ratio = dist / (radii[:, None] + radii[None, :])
    i, j = np.unravel_index(np.argmin(ratio), ratio.shape)
    if ratio[i, j] >= COLLAPSE_FRACTION:
        return None
    return (
        f"{structure[i].specie}–{structure[j].specie} {dist[i, j]:.2f} Å apart, below "
        f"{COLLAPSE_FRACTION:g} × their radii sum ({radii[i] + radii[j]:.2f} Å)"
    )


def _as_structure(atoms) -> Structure:
    # a plain Structure: nothing that points back at the calculator (it must pickle)
    return Structure(atoms.cell[:], atoms.get_chemical_symbols(), atoms.get_scaled_positions())


class RelaxationError(RuntimeError):
    """A relaxation that failed, with the reason in the message.

    ``seconds`` is the wall time spent before it failed (None when refused before any work),
    so a throughput count can include failures.
    """

    def __init__(self, message: str, seconds: float | None = None):
        super().__init__(message)
        self.seconds = seconds


@dataclass(frozen=True)
class Relaxation:
    """The outcome of one relaxation."""

    structure: Structure  # relaxed
    energy_per_atom: float  # eV/atom, MP2020 scale (see pccd.mlip)
    converged: bool  # max force (and stress) below fmax within max_steps
    steps: int
    rmsd: float  # Å, atom displacement between input and relaxed structure
    volume_change: float  # relative, relaxed / input - 1
    seconds: float
    #: eV/atom of the input structure (MP2020 scale), from the relaxation's first evaluation
    initial_energy_per_atom: float | None = None


def displacement_rmsd(initial: Structure, final: Structure) -> float:
    """RMS displacement (Å) of corresponding atoms, periodic, in the final cell's metric.

    Atoms keep their order through a relaxation, so no matching is needed; fractional
    differences are wrapped to [-0.5, 0.5) so an atom crossing the cell boundary counts as
    moving a little, not a whole cell. Cell strain is reported separately as ``volume_change``.
    """
    if len(initial) != len(final):
        raise ValueError("structures differ in atom count")
    diff = final.frac_coords - initial.frac_coords
    diff -= np.round(diff)
    cart = diff @ final.lattice.matrix
    return float(np.sqrt(np.mean(np.sum(cart**2, axis=1))))


def check_input_volume(structure: Structure) -> None:
    """Refuse an input whose volume per atom is outside :data:`VOLUME_PER_ATOM_LIMITS`."""
    lo, hi = VOLUME_PER_ATOM_LIMITS
    v0 = structure.volume / len(structure)
    if not lo <= v0 <= hi:
        # said apart from a blow-up: the input itself is implausible (some MP entries are)
        raise RelaxationError(
            f"{structure.formula}: input volume {v0:.1f} Å³/atom is outside the plausible "
            f"{lo:g}–{hi:g} Å³/atom; not relaxed"
        )


def check_step(structure: Structure, atoms, step: int) -> None:
    """The checks run after every optimizer step (``step`` 0 is the input): collapse every
    :data:`COLLAPSE_CHECK_EVERY` steps, blow-up and non-finite positions every step.

    Shared by :func:`relax` and the batched engine, so both classify failures identically.
    """
    lo, hi = VOLUME_PER_ATOM_LIMITS
    if step % COLLAPSE_CHECK_EVERY == COLLAPSE_CHECK_EVERY - 1:
        collapsed = collapsed_pair(_as_structure(atoms))  # stop early: saves the steps
        if collapsed:
            raise RelaxationError(f"relaxation of {structure.formula} collapsed: {collapsed}")
    vpa = atoms.get_volume() / len(atoms)
    if not lo <= vpa <= hi:
        raise RelaxationError(
            f"relaxation of {structure.formula} blew up: volume {vpa:.1f} Å³/atom"
        )
    if not np.isfinite(atoms.get_positions()).all():
        raise RelaxationError(f"relaxation of {structure.formula}: non-finite positions")


def finish_relaxation(
    structure: Structure,
    atoms,
    mlip: MLIP,
    *,
    converged: bool,
    steps: int,
    raw_energy: float,
    initial_raw_energy: float | None,
    seconds: float,
) -> Relaxation:
    """The final checks (finite energy, no collapse) and the :class:`Relaxation` record."""
    if not math.isfinite(raw_energy):
        raise RelaxationError(f"relaxation of {structure.formula}: non-finite energy")
    relaxed = _as_structure(atoms)
    collapsed = collapsed_pair(relaxed)
    if collapsed:
        raise RelaxationError(f"relaxation of {structure.formula} collapsed: {collapsed}")
    energy = mlip.energy_per_atom(relaxed, raw_energy=raw_energy)
    if energy < ENERGY_PER_ATOM_FLOOR:
        raise RelaxationError(
            f"relaxation of {structure.formula} fell into an MLIP hole: {energy:.1f} eV/atom, "
            f"below any real phase (floor {ENERGY_PER_ATOM_FLOOR:g})"
        )
    initial = None
    if initial_raw_energy is not None and math.isfinite(initial_raw_energy):
        try:
            initial = mlip.energy_per_atom(structure, raw_energy=initial_raw_energy)
        except MLIPError:
            initial = None
    return Relaxation(
        structure=relaxed,
        energy_per_atom=energy,
        converged=converged,
        steps=steps,
        rmsd=displacement_rmsd(structure, relaxed),
        volume_change=float(relaxed.volume / structure.volume - 1.0),
        seconds=seconds,
        initial_energy_per_atom=initial,
    )


def relax(
    structure: Structure,
    mlip: MLIP,
    fmax: float = 0.05,
    max_steps: int = 500,
    relax_cell: bool = True,
) -> Relaxation:
    """Relax ``structure`` with ``mlip`` and return the relaxed structure and its energy.

    Args:
        fmax: force convergence criterion (eV/Å); the cell filter also scales stresses to it.
        max_steps: cap on optimizer steps; a relaxation that hits it is returned with
            ``converged=False`` rather than raised, since its energy is still informative.

    Raises:
        RelaxationError: with the reason (and ``seconds`` spent) for an implausible input
            volume, a blow-up, a collapse or an MLIP failure during the relaxation.
    """
    check_input_volume(structure)
    calculator = mlip.calculator  # loaded before the clock starts
    start = time.perf_counter()
    try:
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.calc = calculator
        target = FrechetCellFilter(atoms) if relax_cell else atoms
        optimizer = FIRE(target, logfile=None)
        initial_raw_energy = None
        try:
            for step, _ in enumerate(optimizer.irun(fmax=fmax, steps=max_steps)):
                if step == 0:  # computed with the first forces (FIRE logs it): no extra call
                    initial_raw_energy = float(atoms.get_potential_energy())
                check_step(structure, atoms, step)
            converged = bool(optimizer.converged())
            raw_energy = float(atoms.get_potential_energy())
        except (MLIPError, RelaxationError):
            raise
        except EVAL_ERRORS as exc:
            raise RelaxationError(f"relaxation of {structure.formula} failed: {exc}") from exc
        return finish_relaxation(
            structure,
            atoms,
            mlip,
            converged=converged,
            steps=int(optimizer.nsteps),
            raw_energy=raw_energy,
            initial_raw_energy=initial_raw_energy,
            seconds=time.perf_counter() - start,
        )
    except RelaxationError as exc:
        exc.seconds = time.perf_counter() - start
        raise
