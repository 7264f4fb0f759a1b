"""Machine-learned interatomic potentials (MLIPs) as the screening oracle.

The paper checked generated crystals with DFT; offline we use MLIPs whose weights ship inside
their PyPI wheels. The one thing that must never go wrong is the *energy scale*: CHGNet is
trained on MP2020-corrected energies, SevenNet-0 on raw GGA/GGA+U energies. Every energy that
leaves this module is therefore on the MP2020-compatible scale (``MLIP.energy_per_atom``), so a
hull built from one MLIP's references and one MLIP's relaxed candidates is consistent. Mixing
MLIPs in one hull is prevented by keying reference tables on ``MLIP.name``.
"""

from __future__ import annotations

import importlib
import math
import warnings
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from pymatgen.core import Structure

from pccd.errors import InputError

#: Built-in MLIPs: name -> (description, whether energies need the MP2020 correction).
BUILTIN: dict[str, tuple[str, bool]] = {
    "chgnet": ("CHGNet 0.3.0 (chgnet wheel); MP2020-compatible energies", False),
    "7net-0": ("SevenNet-0 (sevenn wheel); raw GGA/GGA+U energies, MP2020-corrected here", True),
}
DEFAULT_MLIP = "chgnet"
SCREEN_EXTRA_HINT = 'install the screening extra: pip install -e ".[screen]"'

EVAL_ERRORS = (ValueError, RuntimeError, IndexError, KeyError, NotImplementedError)
"""What a calculator raises on a structure it cannot evaluate (SevenNet: unknown element on
attach, ValueError; ASE's EMT: NotImplementedError), as opposed to a bug in our code."""


class MLIPError(RuntimeError):
    """The MLIP cannot evaluate a structure (unsupported element, NaN energy, ...)."""


@dataclass
class MLIP:
    """A named interatomic potential that returns MP2020-scale energies.

    Args:
        name: ``"chgnet"``, ``"7net-0"``, or an import path ``"package.module:Factory"`` whose
            call returns an ASE calculator.
        mp2020_correction: apply ``MaterialsProject2020Compatibility`` to raw energies; defaults
            to what the built-in model needs, ``False`` for custom calculators.
        device: torch device for the built-in models (``"cpu"``, ``"cuda"``; default automatic).
    """

    name: str = DEFAULT_MLIP
    mp2020_correction: bool | None = None
    device: str | None = None
    _calculator: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.name not in BUILTIN and ":" not in self.name:
            raise InputError(
                f"unknown MLIP {self.name!r}: use one of {sorted(BUILTIN)} "
                "or an import path 'module:factory' returning an ASE calculator"
            )
        if self.mp2020_correction is None:
            self.mp2020_correction = BUILTIN.get(self.name, ("", False))[1]

    @property
    def calculator(self):
        """The ASE calculator, loaded once (offline: weights come from the wheel)."""
        if self._calculator is None:
            self._calculator = _load_calculator(self.name, self.device)
        return self._calculator

    def raw_energy(self, structure: Structure) -> float:
        """Total energy (eV) of ``structure`` as the calculator returns it."""
        if self.name == "chgnet":  # energy-only pass: 2-3x faster than the calculator's E+F+S
            model = self.calculator.model
            try:
                energy = float(model.predict_structure(structure, task="e")["e"]) * len(structure)
            except EVAL_ERRORS as exc:
                raise self.cannot_evaluate(structure, exc) from exc
            if not math.isfinite(energy):
                raise MLIPError(f"chgnet returned a non-finite energy for {structure.formula}")
            return energy
        # the adaptor imports ASE's symmetry stack (~0.3 s); the CLI imports this module for
        # every command, and only an energy evaluation needs it
        from pymatgen.io.ase import AseAtomsAdaptor

        atoms = AseAtomsAdaptor.get_atoms(structure)
        try:
            atoms.calc = self.calculator  # SevenNet checks the elements here
            energy = float(atoms.get_potential_energy())
        except EVAL_ERRORS as exc:  # unsupported elements end up here
            raise self.cannot_evaluate(structure, exc) from exc
        if not math.isfinite(energy):
            raise MLIPError(f"{self.name} returned a non-finite energy for {structure.formula}")
        return energy

    def cannot_evaluate(self, structure: Structure, exc: BaseException) -> MLIPError:
        """``exc`` (one of :data:`EVAL_ERRORS`, or already an MLIPError) as the MLIPError that
        names this MLIP and the structure: one wording for single and batched evaluation."""
        if isinstance(exc, MLIPError):
            return exc
        return MLIPError(f"{self.name} cannot evaluate {structure.formula}: {exc}")

    def energy_per_atom(self, structure: Structure, raw_energy: float | None = None) -> float:
        """Energy per atom on the MP2020-compatible scale (single point unless given)."""
        energy = self.raw_energy(structure) if raw_energy is None else raw_energy
        if self.mp2020_correction:
            energy = mp2020_corrected_energy(structure, energy)
        return energy / len(structure)


def _load_calculator(name: str, device: str | None):
    try:
        if name == "chgnet":
            # optional extra: screen (or eval)
            from chgnet.model import CHGNet
            from chgnet.model.dynamics import CHGNetCalculator

            model = CHGNet.load(model_name="0.3.0", use_device=device, verbose=False)
            return CHGNetCalculator(model=model, use_device=device, on_isolated_atoms="ignore")
        if name == "7net-0":
            from sevenn.calculator import SevenNetCalculator  # optional extra: screen

            return SevenNetCalculator("7net-0", device=device or "auto")
    except ImportError as exc:
        raise ImportError(f"MLIP {name!r} is not installed; {SCREEN_EXTRA_HINT}") from exc
    module_name, _, attr = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise InputError(
            f"--mlip {name!r}: cannot import {attr!r} from {module_name!r} ({exc}); give "
            "'package.module:factory' where factory() returns an ASE calculator"
        ) from exc
    return factory()


@cache
def _u_values() -> dict[str, dict[str, float]]:
    """The Hubbard U values MP used (MPRelaxSet): anion -> metal -> U (eV)."""
    from pymatgen.io.vasp.sets import MPRelaxSet  # 0.75 s to import; only MP2020 energies use it

    return MPRelaxSet.CONFIG["INCAR"]["LDAUU"]


def mp2020_corrected_energy(structure: Structure, raw_energy: float) -> float:
    """Apply MP2020 anion and GGA+U corrections to a raw GGA(+U) total energy.

    MP ran GGA+U for oxides and fluorides of Co, Cr, Fe, Mn, Mo, Ni, V and W; SevenNet-0 learned
    those energies, so the entry is labelled the way MP would have run it.
    """
    # 1.6 s to import: loaded only when an MLIP's energies are put on the MP2020 scale
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    symbols = {el.symbol for el in structure.composition.elements}
    hubbards: dict[str, float] = {}
    for anion, metals in _u_values().items():
        if anion in symbols:
            hubbards = {el: metals.get(el, 0.0) for el in sorted(symbols)}
            break
    run_type = "GGA+U" if any(hubbards.values()) else "GGA"
    entry = ComputedStructureEntry(
        structure,
        raw_energy,
        parameters={"run_type": run_type, "hubbards": hubbards if run_type == "GGA+U" else {}},
    )
    compat = MaterialsProject2020Compatibility(check_potcar=False)
    with warnings.catch_warnings():  # "failed to guess oxidation states" for intermetallics
        warnings.simplefilter("ignore")
        processed = compat.process_entry(entry, clean=True, inplace=False)
    if processed is None:
        raise MLIPError(f"MP2020 compatibility rejected {structure.formula}")
    return float(processed.energy)
