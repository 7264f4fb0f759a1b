"""Is a crystal already known? A reference database indexed by reduced formula.

Two crystals can only match (``StructureMatcher``, default tolerances) when their reduced
formulas are equal, so the index maps a reduced formula to the reference rows with that
formula and parses those rows' CIFs only when a query needs them (then keeps them). Checking a
generated crystal therefore costs a dictionary look-up plus a few ``fit`` calls, instead of a
scan of the 124k-row ``mp_reference.csv.gz``; building the index reads the CSV once (~3 s).

The screening step (stable, *novel* candidates) uses the same index.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Structure

from pccd.errors import MissingInputError


class ReferenceIndex:
    """Known crystals grouped by reduced formula, with lazily parsed structures.

    Args:
        entries: ``(id, reduced_formula, structure_or_cif_text)`` triples.
        matcher: a ``StructureMatcher`` (default tolerances: ltol 0.2, stol 0.3, angle 5°).
    """

    def __init__(self, entries: Iterable[tuple[str, str, Structure | str]], matcher=None):
        self.matcher = matcher or StructureMatcher()
        self._rows: dict[str, list[list]] = {}
        self._size = 0
        for ident, formula, item in entries:
            self._rows.setdefault(formula, []).append([str(ident), item])
            self._size += 1

    def __len__(self) -> int:
        return self._size

    def add(self, ident: str, structure: Structure) -> None:
        """Register one more known crystal (used for uniqueness within a run)."""
        self._rows.setdefault(structure.composition.reduced_formula, []).append(
            [str(ident), structure]
        )
        self._size += 1

    @property
    def formulas(self) -> int:
        """Number of distinct reduced formulas."""
        return len(self._rows)

    @classmethod
    def from_structures(
        cls, structures: Sequence[Structure], ids: Sequence[str] | None = None, matcher=None
    ) -> ReferenceIndex:
        """An index over structures already in memory (tests, small references)."""
        ids = ids if ids is not None else [str(i) for i in range(len(structures))]
        return cls(
            ((i, s.composition.reduced_formula, s) for i, s in zip(ids, structures, strict=True)),
            matcher,
        )

    @classmethod
    def from_csv(cls, path: str | Path, matcher=None) -> ReferenceIndex:
        """Index a CSV in the MP-20 format (``material_id``, ``pretty_formula``, ``cif``).

        Formulas are re-reduced with pymatgen so that ``NaN`` (sodium nitride) is a formula,
        not a missing value, and spellings agree with ``Composition.reduced_formula``.
        """
        path = Path(path)
        if not path.exists():
            raise MissingInputError(f"reference database {path} not found")
        frame = pd.read_csv(
            path, usecols=["material_id", "pretty_formula", "cif"], keep_default_na=False
        )
        reduced: dict[str, str] = {}
        with warnings.catch_warnings():  # noble gases have no electronegativity: harmless
            warnings.simplefilter("ignore")
            for f in frame["pretty_formula"].unique():
                try:
                    reduced[f] = Composition(f).reduced_formula
                except (ValueError, KeyError):
                    reduced[f] = f
        return cls(
            zip(
                frame["material_id"].tolist(),
                frame["pretty_formula"].map(reduced).tolist(),
                frame["cif"].tolist(),
                strict=True,
            ),
            matcher,
        )

    def candidates(self, formula: str) -> list[tuple[str, Structure]]:
        """Reference crystals with this reduced formula, parsed on first use (bad CIFs are
        dropped from the index)."""
        rows = self._rows.get(formula, [])
        out = []
        for row in rows:
            if isinstance(row[1], str):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        row[1] = Structure.from_str(row[1], fmt="cif")
                except Exception:  # an unparsable reference CIF can match nothing
                    row[1] = None
            if row[1] is not None:
                out.append((row[0], row[1]))
        return out

    def find(self, structure: Structure) -> str | None:
        """The id of the first known crystal matching ``structure``, or ``None``."""
        for ident, known in self.candidates(structure.composition.reduced_formula):
            if self.matcher.fit(structure, known):
                return ident
        return None

    def is_novel(self, structure: Structure) -> bool:
        """True when no known crystal matches (compared within the same reduced formula)."""
        return self.find(structure) is None
