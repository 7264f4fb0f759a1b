"""``pccd generate --relax MLIP``: relax each crystal right after it is decoded.

The raw CIF stays where ``pccd generate`` always writes it; the relaxed one goes to
``relaxed/<same name>``. The summary gains the columns :data:`RELAX_COLUMNS`: the MLIP energy
of the raw crystal and of the relaxed one side by side (eV/atom, MP2020 scale), and for a
failed relaxation the reason — the same machinery and the same failure classification as
``pccd screen`` (implausible input volume, blow-up, collapse, MLIP error).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from pccd.errors import InputError
from pccd.mlip import EVAL_ERRORS, MLIP, MLIPError
from pccd.screen.engines import DEFAULT_BATCH_SIZE, DEFAULT_RELAX_ENGINE, RELAX_ENGINES

RELAX_COLUMNS = (
    "energy_per_atom",
    "relaxed_energy_per_atom",
    "relax_status",
    "relax_reason",
    "relax_converged",
    "relax_steps",
    "relax_seconds",
    "relaxed_cif",
)
RELAXED_DIR = "relaxed"


@dataclass
class DecodeRelaxer:
    """Relax decoded crystals with ``mlip`` using the ``engine`` of ``pccd screen``.

    Args:
        mlip: MLIP name (``chgnet``, ``7net-0``, ``module:factory``).
        engine: ``"ase"`` (per-crystal FIRE) or ``"batched"`` (one MLIP call per step for
            all crystals of a generated batch).
    """

    mlip: str
    engine: str = DEFAULT_RELAX_ENGINE
    fmax: float = 0.05
    max_steps: int = 500
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str | None = None
    _mlip: MLIP | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.engine not in RELAX_ENGINES:
            raise InputError(f"unknown relaxation engine {self.engine!r}; use {RELAX_ENGINES}")
        MLIP(self.mlip)  # unknown names: ValueError before any work

    def settings(self) -> dict[str, object]:
        """What run.json records (results depend on these)."""
        return {"mlip": self.mlip, "engine": self.engine, "fmax": self.fmax,
                "max_steps": self.max_steps}  # fmt: skip

    @property
    def model(self) -> MLIP:
        if self._mlip is None:
            self._mlip = MLIP(self.mlip, device=self.device)
        return self._mlip

    def relax_rows(self, rows: list[dict[str, object]], out: Path) -> None:
        """Relax the crystals of ``rows`` (summary rows with a ``cif``) and fill in their
        relaxation columns; relaxed CIFs are written to ``out/relaxed/``."""
        # the relaxers import ASE's optimisers (~0.5 s); every `pccd generate` imports this
        # module, and only `--relax` needs them
        from pccd.screen.batched import relax_many
        from pccd.screen.relax import RelaxationError, relax

        todo: list[tuple[int, Structure]] = []
        for k, row in enumerate(rows):
            if row.get("cif"):
                todo.append((k, Structure.from_file(out / str(row["cif"]))))
            else:
                row.update(relax_status="not_decoded")
        if not todo:
            return
        structures = dict(todo)
        results: dict[int, Any] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.engine == "batched":
                for k, result in relax_many(
                    todo, self.model, fmax=self.fmax, max_steps=self.max_steps,
                    batch_size=self.batch_size,
                ):  # fmt: skip
                    results[k] = result
            else:
                for k, structure in todo:
                    try:
                        results[k] = relax(
                            structure, self.model, fmax=self.fmax, max_steps=self.max_steps
                        )
                    except (RelaxationError, MLIPError) as exc:
                        results[k] = exc
            (out / RELAXED_DIR).mkdir(exist_ok=True)
            for k, result in results.items():
                row = rows[k]
                if isinstance(result, Exception):
                    row.update(
                        relax_status="relax_failed",
                        relax_reason=" ".join(str(result).split()),
                        energy_per_atom=_fmt(self._single_point(structures[k])),
                    )
                    if getattr(result, "seconds", None) is not None:
                        row["relax_seconds"] = f"{result.seconds:.2f}"
                    continue
                name = f"{RELAXED_DIR}/{row['cif']}"
                result.structure.to(filename=str(out / name))
                row.update(
                    relax_status="ok",
                    energy_per_atom=_fmt(result.initial_energy_per_atom),
                    relaxed_energy_per_atom=_fmt(result.energy_per_atom),
                    relax_converged=result.converged,
                    relax_steps=result.steps,
                    relax_seconds=f"{result.seconds:.2f}",
                    relaxed_cif=name,
                )

    def _single_point(self, structure: Structure) -> float | None:
        """The raw crystal's energy when its relaxation failed (None if the MLIP cannot)."""
        try:
            return self.model.energy_per_atom(structure)
        except EVAL_ERRORS:  # MLIPError is a RuntimeError
            return None


def _fmt(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.5f}"
