"""Energy above the convex hull from one MLIP's reference energies.

Candidates and competing phases must come from the same MLIP on the same (MP2020) scale, so the
hull is always built from a :class:`ReferenceEnergies` of the candidate's MLIP.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition

from pccd.screen.references import ReferenceEnergies, chemsys


class HullError(ValueError):
    """The hull cannot be built (e.g. no reference phase for one of the elements)."""


@dataclass(frozen=True)
class HullResult:
    """Where a composition/energy sits relative to the hull of its chemical system."""

    e_above_hull: float  # eV/atom; negative means below the known hull (a new ground state)
    decomposition: dict[str, float]  # competing phase "formula (id)" -> fraction of atoms
    n_references: int

    @property
    def decomposition_str(self) -> str:
        return " + ".join(f"{frac:.3f} {name}" for name, frac in self.decomposition.items())


class ConvexHull:
    """Phase diagrams per chemical system, built lazily and cached.

    Args:
        references: reference energies of the MLIP that evaluated the candidates.
        exclude: material ids left out of every hull (e.g. the material being validated).
    """

    def __init__(self, references: ReferenceEnergies, exclude: frozenset[str] = frozenset()):
        self.references = references
        self.exclude = exclude
        self._diagram = lru_cache(maxsize=256)(self._build)

    def _build(self, system: str) -> PhaseDiagram:
        refs = [
            r
            for r in self.references.for_system(system.split("-"))
            if r.material_id not in self.exclude
        ]
        missing = set(system.split("-")) - {
            r.composition.elements[0].symbol for r in refs if len(r.composition.elements) == 1
        }
        if missing:
            raise HullError(
                f"no reference phase for element(s) {', '.join(sorted(missing))} in {system} "
                f"({self.references.mlip.name} table)"
            )
        entries = [
            PDEntry(r.composition, r.energy_per_atom * r.composition.num_atoms, name=r.material_id)
            for r in refs
        ]
        return PhaseDiagram(entries)

    def phase_diagram(self, elements) -> PhaseDiagram:
        return self._diagram(chemsys(elements))

    def e_above_hull(self, composition: Composition, energy_per_atom: float) -> HullResult:
        """E_hull of a phase with this composition and MLIP energy per atom (MP2020 scale)."""
        composition = Composition(composition)
        diagram = self.phase_diagram(el.symbol for el in composition.elements)
        entry = PDEntry(composition, energy_per_atom * composition.num_atoms, name="candidate")
        decomp, e_hull = diagram.get_decomp_and_e_above_hull(entry, allow_negative=True)
        parts = {
            f"{e.composition.reduced_formula} ({e.name})": round(float(frac), 4)
            for e, frac in sorted(decomp.items(), key=lambda kv: -kv[1])
        }
        return HullResult(float(e_hull), parts, len(diagram.all_entries))
