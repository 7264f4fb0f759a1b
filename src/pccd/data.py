"""Crystal data layer: read structures from the usual sources, filter them, explain every rejection.

Sources understood by :func:`load`:

* the CDVAE / DiffCSP "MP-20" CSV format (``.csv`` or ``.csv.gz``) with a ``cif`` column,
* CIF and POSCAR / CONTCAR (``*.vasp``, ``*.poscar``) files,
* any file ASE can read (extxyz / xyz, trajectory, ASE database ``.db``),
* a directory of any of these: every entry is answered (:class:`FileFate`), a file of an unknown
  kind or one that cannot be read at all becoming a rejection like any bad crystal.

Why a table and not just a list of ``Structure``: the training set has 41k crystals and building
41k pymatgen objects costs seconds every run. Parsed crystals are kept as flat numpy arrays
(:class:`CrystalTable`) that are cached on disk, encode directly into the point-cloud
representation, and turn into pymatgen ``Structure`` objects only when asked.

Bad input never stops a load: each rejected row or file becomes a :class:`Rejection` naming the
item and the reason, and everything else loads.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import re
import sqlite3
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.core import DummySpecies, Lattice, Structure
from pymatgen.core.periodic_table import Element
from pymatgen.io.cif import CifParser

from pccd.conditioning import MAGNETIC_ORDERINGS, stability_index

CACHE_VERSION = 3  # 2: non-physical cells rejected; 3: e_above_hull kept (stability labels)
CIF_SUFFIXES = (".cif",)
POSCAR_NAMES = ("POSCAR", "CONTCAR")
POSCAR_SUFFIXES = (".vasp", ".poscar")
#: read through ASE when found in a directory; a single file of any other kind goes to ASE too
ASE_SUFFIXES = (".extxyz", ".xyz", ".traj", ".db")
CSV_SUFFIXES = (".csv", ".csv.gz")
MAGNETIC_COLUMNS = ("magnetic_ordering", "ordering")


class RejectReason(StrEnum):
    """Why a crystal was not loaded (stable strings, used in reports and the cache)."""

    UNPARSABLE = "unparsable"
    PARTIAL_OCCUPANCY = "partial_occupancy"
    TOO_MANY_SITES = "too_many_sites"
    TOO_MANY_ELEMENTS = "too_many_elements"
    UNKNOWN_ELEMENT = "unknown_element"
    ZERO_VOLUME = "zero_volume"
    OVERLAPPING_ATOMS = "overlapping_atoms"
    EMPTY = "empty"
    #: cell lengths, angles or volume per atom outside what any crystal has (e.g. a 10⁶ Å or a
    #: negative cell length in the CIF text, an impossible angle triple, 0.2 Å³ per atom)
    NONPHYSICAL_CELL = "nonphysical_cell"
    #: a directory entry that is no crystal file the loader knows (a ``.txt``, a subdirectory)
    UNSUPPORTED_FORMAT = "unsupported_format"


@dataclass(frozen=True)
class FilterOptions:
    """Which crystals to keep. Defaults are the PCCD paper's filter (≤16 sites, ≤3 elements).

    Attributes:
        max_sites: largest number of sites in the cell.
        max_elements: largest number of distinct elements.
        min_distance: atoms closer than this (Å, minimum image) count as overlapping.
        min_volume: cells with a smaller volume (Å³) count as degenerate.
        min_length, max_length: cell lengths (Å) outside this window are non-physical.
        min_volume_per_atom, max_volume_per_atom: volume per atom (Å³) outside this window is
            non-physical. The defaults keep every row of the MP splits (mp_pccd train and val:
            lengths 0.98–104 Å, 4.4–3,734 Å³/atom, the largest being isolated clusters in a
            box) while rejecting cells no crystal has.
    """

    max_sites: int = 16
    max_elements: int = 3
    min_distance: float = 0.5
    min_volume: float = 0.1
    min_length: float = 0.5
    max_length: float = 300.0
    min_volume_per_atom: float = 1.0
    max_volume_per_atom: float = 5000.0


@dataclass(frozen=True)
class Rejection:
    """One item that was not loaded: its id (row id or file name), reason and a human detail."""

    id: str
    reason: RejectReason
    detail: str


@dataclass(frozen=True)
class FileFate:
    """What became of one entry of a loaded directory, so that no file goes unaccounted for.

    Attributes:
        name: the entry's file name.
        format: how it was read (``cif``, ``poscar``, ``ase``, ``csv``), ``""`` when it was not.
        loaded: crystals it gave.
        rejected: rejections per reason (a file that cannot be read at all is one rejection).
    """

    name: str
    format: str
    loaded: int
    rejected: dict[str, int]

    def describe(self) -> str:
        """One line for ``pccd data inspect``: the name, then what the file gave."""
        parts = [f"{self.loaded} loaded"] if self.format else []
        parts += [f"{reason} {n}" for reason, n in self.rejected.items()]
        return f"{self.name} ({self.format or 'not read'}): {', '.join(parts)}"


@dataclass
class CrystalRecord:
    """A loaded crystal: pymatgen ``Structure``, an id, and optional properties.

    ``properties`` holds ``band_gap`` (eV), ``magnetic_ordering`` (one of NM/FM/AFM/FiM) and
    ``e_above_hull`` (eV/atom, energy above the convex hull) when the source provides them;
    missing values are absent, never zero.
    """

    id: str
    structure: Structure
    properties: dict[str, float | str] = field(default_factory=dict)


class InvalidCrystal(ValueError):
    """Raised by :func:`check_structure` with the reason a crystal is rejected."""

    def __init__(self, reason: RejectReason, detail: str):
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def check_structure(structure: Structure, options: FilterOptions = FilterOptions()) -> None:
    """Raise :class:`InvalidCrystal` unless ``structure`` passes the filter.

    Checks run cheapest first so that a large or disordered cell is rejected before any
    distance matrix is computed.
    """
    if len(structure) == 0:
        raise InvalidCrystal(RejectReason.EMPTY, "no sites")
    if not structure.is_ordered:
        raise InvalidCrystal(
            RejectReason.PARTIAL_OCCUPANCY, "site occupancies below 1 (disordered structure)"
        )
    for sp in structure.composition.elements:
        # Unknown CIF symbols ("Xx", "Q") parse as DummySpecies with a meaningless Z.
        if isinstance(sp, DummySpecies) or not 1 <= getattr(sp, "Z", 0) <= 118:
            raise InvalidCrystal(RejectReason.UNKNOWN_ELEMENT, f"species {sp!s} is not an element")
    if len(structure) > options.max_sites:
        raise InvalidCrystal(
            RejectReason.TOO_MANY_SITES, f"{len(structure)} sites > {options.max_sites}"
        )
    n_el = len(structure.composition.elements)
    if n_el > options.max_elements:
        raise InvalidCrystal(
            RejectReason.TOO_MANY_ELEMENTS, f"{n_el} elements > {options.max_elements}"
        )
    volume = structure.lattice.volume
    if not math.isfinite(volume) or volume < options.min_volume:
        raise InvalidCrystal(RejectReason.ZERO_VOLUME, f"cell volume {volume:.3g} Å³")
    check_cell(structure.lattice.abc, structure.lattice.angles, options)
    per_atom = volume / len(structure)
    if not options.min_volume_per_atom <= per_atom <= options.max_volume_per_atom:
        raise InvalidCrystal(
            RejectReason.NONPHYSICAL_CELL,
            f"{per_atom:.4g} Å³ per atom, outside {options.min_volume_per_atom:g}–"
            f"{options.max_volume_per_atom:g}",
        )
    if len(structure) > 1:
        dm = structure.distance_matrix
        iu = np.triu_indices(len(structure), 1)
        dmin = float(dm[iu].min())
        if dmin < options.min_distance:
            raise InvalidCrystal(
                RejectReason.OVERLAPPING_ATOMS,
                f"two atoms {dmin:.3f} Å apart (< {options.min_distance} Å)",
            )


def check_cell(
    lengths: Sequence[float], angles: Sequence[float], options: FilterOptions = FilterOptions()
) -> None:
    """Raise :class:`InvalidCrystal` (``nonphysical_cell``) for impossible cell parameters.

    Lengths must lie in ``[min_length, max_length]`` Å, every angle strictly between 0° and 180°,
    and the triple must describe a real cell (each angle smaller than the sum of the other two,
    all three summing to less than 360°).
    """
    for axis, value in zip("abc", lengths, strict=True):
        if not (math.isfinite(value) and options.min_length <= value <= options.max_length):
            raise InvalidCrystal(
                RejectReason.NONPHYSICAL_CELL,
                f"cell length {axis} = {value:g} Å, outside {options.min_length:g}–"
                f"{options.max_length:g} Å",
            )
    for name, value in zip(("alpha", "beta", "gamma"), angles, strict=True):
        if not (math.isfinite(value) and 0.0 < value < 180.0):
            raise InvalidCrystal(
                RejectReason.NONPHYSICAL_CELL, f"cell angle {name} = {value:g}°, not in (0, 180)"
            )
    al, be, ga = angles
    tol = 1e-6
    if (
        al + be + ga >= 360.0 - tol
        or al >= be + ga - tol
        or be >= al + ga - tol
        or ga >= al + be - tol
    ):
        raise InvalidCrystal(
            RejectReason.NONPHYSICAL_CELL,
            f"cell angles {al:g}°, {be:g}°, {ga:g}° describe no cell (each must be less than "
            "the sum of the other two, all three less than 360°)",
        )


_CIF_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?:\(\d+\))?"
_CIF_CELL = re.compile(
    r"^[ \t]*_cell_(length_a|length_b|length_c|angle_alpha|angle_beta|angle_gamma)[ \t]+"
    + _CIF_NUMBER,
    re.MULTILINE,
)


def check_cif_cell(text: str, options: FilterOptions = FilterOptions()) -> None:
    """Check the cell parameters as the CIF text states them, before a parser touches them.

    pymatgen silently builds *some* cell from a negative length or an impossible angle, so the
    raw ``_cell_length_*`` / ``_cell_angle_*`` values are checked here (every data block).
    """
    blocks = re.split(r"^[ \t]*data_", text, flags=re.MULTILINE)
    for block in blocks:
        values: dict[str, float] = {}
        for key, number in _CIF_CELL.findall(block):
            values.setdefault(key, float(number))
        lengths = [values[k] for k in ("length_a", "length_b", "length_c") if k in values]
        angles = [values[k] for k in ("angle_alpha", "angle_beta", "angle_gamma") if k in values]
        for axis, value in zip("abc", lengths, strict=False):
            if not value > 0:
                raise InvalidCrystal(
                    RejectReason.NONPHYSICAL_CELL, f"_cell_length_{axis} is {value:g} (≤ 0)"
                )
        if len(lengths) == 3 and len(angles) == 3:
            check_cell(lengths, angles, options)


# --------------------------------------------------------------------------------------------
# The compact table
# --------------------------------------------------------------------------------------------


@dataclass
class CrystalTable:
    """Crystals as flat arrays: cheap to cache, slice and encode.

    Attributes:
        ids: (n,) item ids.
        lattices: (n, 3, 3) lattice matrices, rows are a, b, c in Å.
        offsets: (n + 1,) start of each crystal's sites in ``frac_coords`` / ``numbers``.
        frac_coords: (n_sites_total, 3) fractional coordinates.
        numbers: (n_sites_total,) atomic numbers.
        band_gap: (n,) eV, NaN where unknown.
        magnetic: (n,) index into ``MAGNETIC_ORDERINGS``, -1 where unknown.
        e_above_hull: (n,) eV/atom above the convex hull, NaN where unknown (optional in the
            constructor: all unknown).
        stability: (n,) int8 index into ``STABILITY_LABELS``, -1 where unknown; derived from
            ``e_above_hull`` by :func:`pccd.conditioning.stability_index`, never stored, so
            the label follows the one threshold in :mod:`pccd.conditioning`.
    """

    ids: np.ndarray
    lattices: np.ndarray
    offsets: np.ndarray
    frac_coords: np.ndarray
    numbers: np.ndarray
    band_gap: np.ndarray
    magnetic: np.ndarray
    e_above_hull: np.ndarray | None = None
    stability: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.e_above_hull is None:
            self.e_above_hull = np.full(len(self.ids), np.nan)
        self.e_above_hull = np.asarray(self.e_above_hull, dtype=np.float64)
        self.stability = np.array(
            [stability_index(v) for v in self.e_above_hull.tolist()], dtype=np.int8
        )

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_records(cls, records: Sequence[CrystalRecord]) -> CrystalTable:
        """Flatten records (the inverse of :meth:`record`)."""
        sizes = [len(r.structure) for r in records]
        offsets = np.zeros(len(records) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(sizes)
        frac = np.zeros((offsets[-1], 3))
        numbers = np.zeros(offsets[-1], dtype=np.int16)
        lattices = np.zeros((len(records), 3, 3))
        band_gap = np.full(len(records), np.nan)
        magnetic = np.full(len(records), -1, dtype=np.int8)
        e_above_hull = np.full(len(records), np.nan)
        for i, r in enumerate(records):
            s = r.structure
            frac[offsets[i] : offsets[i + 1]] = s.frac_coords
            numbers[offsets[i] : offsets[i + 1]] = s.atomic_numbers
            lattices[i] = s.lattice.matrix
            if "band_gap" in r.properties:
                band_gap[i] = float(r.properties["band_gap"])
            if "magnetic_ordering" in r.properties:
                magnetic[i] = MAGNETIC_ORDERINGS.index(str(r.properties["magnetic_ordering"]))
            if "e_above_hull" in r.properties:
                e_above_hull[i] = float(r.properties["e_above_hull"])
        return cls(
            ids=np.array([r.id for r in records], dtype=object),
            lattices=lattices,
            offsets=offsets,
            frac_coords=frac,
            numbers=numbers,
            band_gap=band_gap,
            magnetic=magnetic,
            e_above_hull=e_above_hull,
        )

    def sites(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Fractional coordinates and atomic numbers of crystal ``i``."""
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.frac_coords[lo:hi], self.numbers[lo:hi]

    def num_sites(self) -> np.ndarray:
        """(n,) number of sites of every crystal."""
        return np.diff(self.offsets)

    def element_list_groups(self) -> tuple[np.ndarray, list[tuple[int, ...]]]:
        """Crystals grouped by element list: ``(group, lists)`` with ``group`` (n,) the index
        into ``lists`` of each crystal's atomic numbers (ascending, distinct).

        The one grouping behind every per-element-list figure (what the gap adds given the
        elements, which compositions the split knows for a list), so they agree on what a
        list is.
        """
        index: dict[tuple[int, ...], int] = {}
        group = np.empty(len(self), dtype=np.int64)
        for i in range(len(self)):
            key = tuple(np.unique(self.sites(i)[1]).tolist())
            group[i] = index.setdefault(key, len(index))
        return group, list(index)

    def draw_element_lists(self, n: int, seed: int = 0) -> list[list[int]]:
        """Element lists (atomic numbers) of ``n`` crystals drawn with replacement, seeded.

        Requests made from these are distributed like the split's crystals, which is how
        generation is scored against a split (and how a model is asked to "generate like MP").
        """
        picks = np.random.default_rng(seed).choice(len(self), n, replace=True)
        return [np.unique(self.sites(int(i))[1]).tolist() for i in picks]

    def structure(self, i: int) -> Structure:
        """Crystal ``i`` as a pymatgen ``Structure``."""
        frac, numbers = self.sites(i)
        return Structure(Lattice(self.lattices[i]), numbers.tolist(), frac)

    def properties(self, i: int) -> dict[str, float | str]:
        """Known properties of crystal ``i`` (missing ones are absent)."""
        props: dict[str, float | str] = {}
        if not np.isnan(self.band_gap[i]):
            props["band_gap"] = float(self.band_gap[i])
        if self.magnetic[i] >= 0:
            props["magnetic_ordering"] = MAGNETIC_ORDERINGS[self.magnetic[i]]
        if not np.isnan(self.e_above_hull[i]):
            props["e_above_hull"] = float(self.e_above_hull[i])
        return props

    def record(self, i: int) -> CrystalRecord:
        """Crystal ``i`` as a :class:`CrystalRecord`."""
        return CrystalRecord(str(self.ids[i]), self.structure(i), self.properties(i))

    def subset(self, indices: Sequence[int] | np.ndarray) -> CrystalTable:
        """A new table with the crystals at ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64)
        sizes = np.diff(self.offsets)[idx]
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(sizes)
        rows = (
            np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx])
            if len(idx)
            else np.zeros(0, dtype=np.int64)
        )
        return CrystalTable(
            ids=self.ids[idx],
            lattices=self.lattices[idx],
            offsets=offsets,
            frac_coords=self.frac_coords[rows],
            numbers=self.numbers[rows],
            band_gap=self.band_gap[idx],
            magnetic=self.magnetic[idx],
            e_above_hull=self.e_above_hull[idx],
        )


@dataclass
class LoadResult:
    """What :func:`load` returns: the crystals that passed and the rejections with reasons.

    ``files`` (directories only) says what every entry of the directory gave.
    """

    source: str
    table: CrystalTable
    rejected: list[Rejection]
    from_cache: bool = False
    files: list[FileFate] | None = None

    def __len__(self) -> int:
        return len(self.table)

    @property
    def records(self) -> list[CrystalRecord]:
        """All loaded crystals as records (builds pymatgen objects; costs ~0.1 ms each)."""
        return [self.table.record(i) for i in range(len(self.table))]

    def __iter__(self) -> Iterator[CrystalRecord]:
        return (self.table.record(i) for i in range(len(self.table)))

    def rejection_counts(self) -> Counter[str]:
        """Number of rejections per reason."""
        return Counter(r.reason.value for r in self.rejected)


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def _parse_cif_text(text: str) -> list[Structure]:
    """All structures of a CIF text, without symmetrising to a primitive cell."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parser = CifParser.from_str(text)
        structures = parser.parse_structures(primitive=False, on_error="raise")
    return structures


def _classify_parse_error(exc: Exception, text: str | None = None) -> InvalidCrystal:
    """Turn a parser exception into a reason; unknown symbols get their own reason."""
    msg = str(exc) or exc.__class__.__name__
    lowered = msg.lower()
    if "not a valid element" in lowered or "unknown element" in lowered or "symbol" in lowered:
        return InvalidCrystal(RejectReason.UNKNOWN_ELEMENT, msg)
    if "occupanc" in lowered:
        return InvalidCrystal(RejectReason.PARTIAL_OCCUPANCY, msg)
    return InvalidCrystal(RejectReason.UNPARSABLE, f"{exc.__class__.__name__}: {msg}")


def _structures_from_cif(text: str, options: FilterOptions = FilterOptions()) -> list[Structure]:
    check_cif_cell(text, options)
    try:
        structures = _parse_cif_text(text)
    except Exception as exc:  # pymatgen raises many types for malformed CIFs
        raise _classify_parse_error(exc) from exc
    if not structures:
        raise InvalidCrystal(RejectReason.UNPARSABLE, "no structure in CIF")
    return structures


def _property_value(value: object) -> float | None:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _magnetic_value(value: object) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    for name in MAGNETIC_ORDERINGS:
        if text.upper() == name.upper():
            return name
    return None


def _accept(
    item_id: str,
    structure: Structure,
    props: dict[str, float | str],
    options: FilterOptions,
    records: list[CrystalRecord],
    rejected: list[Rejection],
) -> None:
    try:
        check_structure(structure, options)
    except InvalidCrystal as err:
        rejected.append(Rejection(item_id, err.reason, err.detail))
        return
    records.append(CrystalRecord(item_id, structure, props))


def _read_csv(path: Path, options: FilterOptions) -> tuple[list[CrystalRecord], list[Rejection]]:
    df = read_table(path, index_col=0)
    if "cif" not in df.columns:
        raise ValueError(f"{path}: no 'cif' column (expected the CDVAE/DiffCSP CSV format)")
    id_col = "material_id" if "material_id" in df.columns else None
    mag_col = next((c for c in MAGNETIC_COLUMNS if c in df.columns), None)
    records: list[CrystalRecord] = []
    rejected: list[Rejection] = []
    gaps = df["band_gap"].to_numpy() if "band_gap" in df.columns else None
    hulls = df["e_above_hull"].to_numpy() if "e_above_hull" in df.columns else None
    mags = df[mag_col].to_numpy() if mag_col else None
    ids = df[id_col].astype(str).to_numpy() if id_col else df.index.astype(str).to_numpy()
    for row, (item_id, cif) in enumerate(zip(ids, df["cif"].to_numpy(), strict=True)):
        if not isinstance(cif, str) or not cif.strip():
            rejected.append(Rejection(item_id, RejectReason.UNPARSABLE, "empty CIF cell"))
            continue
        try:
            structure = _structures_from_cif(cif, options)[0]
        except InvalidCrystal as err:
            rejected.append(Rejection(item_id, err.reason, err.detail))
            continue
        props: dict[str, float | str] = {}
        if gaps is not None and (g := _property_value(gaps[row])) is not None:
            props["band_gap"] = g
        if hulls is not None and (h := _property_value(hulls[row])) is not None:
            props["e_above_hull"] = h
        if mags is not None and (m := _magnetic_value(mags[row])) is not None:
            props["magnetic_ordering"] = m
        _accept(item_id, structure, props, options, records, rejected)
    return records, rejected


def read_table(path: str | os.PathLike[str], **kwargs):
    """``pandas.read_csv`` whose errors name the file and say what is wrong with it.

    A truncated ``.gz``, a file named ``.gz`` that is not gzip, or text that is not CSV raise a
    ``ValueError`` naming ``path`` (pandas would raise EOFError, BadGzipFile, zlib.error, ...).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return pd.read_csv(path, **kwargs)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(
            f"{path}: damaged or truncated gzip file ({exc}); download or copy it again"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text CSV file ({exc})") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{path}: not a readable CSV file ({exc})") from exc


def _file_format(p: Path) -> str | None:
    """How a file is read, by its name (None: no format the loader knows)."""
    name = p.name.lower()
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(CIF_SUFFIXES):
        return "cif"
    if name.endswith(POSCAR_SUFFIXES) or p.name.startswith(POSCAR_NAMES):
        return "poscar"
    if name.endswith(ASE_SUFFIXES):
        return "ase"
    return None


def _read_structure_file(
    f: Path, options: FilterOptions
) -> tuple[list[CrystalRecord], list[Rejection]]:
    """One CIF (possibly several data blocks) or POSCAR file; ids are the file stem."""
    records: list[CrystalRecord] = []
    rejected: list[Rejection] = []
    try:
        if f.suffix.lower() in CIF_SUFFIXES:
            structures = _structures_from_cif(f.read_text(errors="replace"), options)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                structures = [Structure.from_file(f)]
    except InvalidCrystal as err:
        return records, [Rejection(f.stem, err.reason, f"{f.name}: {err.detail}")]
    except Exception as exc:
        err = _classify_parse_error(exc)
        return records, [Rejection(f.stem, err.reason, f"{f.name}: {err.detail}")]
    for k, s in enumerate(structures):
        item_id = f.stem if len(structures) == 1 else f"{f.stem}:{k}"
        _accept(item_id, s, {}, options, records, rejected)
    return records, rejected


def _read_directory(
    directory: Path, options: FilterOptions
) -> tuple[list[CrystalRecord], list[Rejection], list[FileFate]]:
    """Every entry of ``directory``, each answered: crystals, rejections, or both.

    A file that cannot be read as a whole (a CSV without a ``cif`` column, an extxyz that ASE
    cannot parse) is one rejection named by its file name, and the other files still load, as
    rows of a CSV do. Subdirectories are not descended into (they are rejected, so nothing is
    read that the user did not point at, and nothing is dropped without a word).
    """
    records: list[CrystalRecord] = []
    rejected: list[Rejection] = []
    fates: list[FileFate] = []
    for entry in sorted(directory.iterdir()):
        fmt = _file_format(entry) if entry.is_file() else None
        if fmt is None:
            kind = (
                "a directory (not descended into; load it on its own)"
                if entry.is_dir()
                else "not a regular file"
                if not entry.is_file()
                else "not a crystal file (read: .cif, POSCAR/CONTCAR, .vasp, .poscar, "
                + ", ".join(ASE_SUFFIXES + CSV_SUFFIXES)
                + ")"
            )
            got = [], [Rejection(entry.name, RejectReason.UNSUPPORTED_FORMAT, kind)]
        else:
            try:
                got = _read_file(entry, fmt, options)
            except ValueError as exc:  # the readers' whole-file errors, which name the file
                got = [], [Rejection(entry.name, RejectReason.UNPARSABLE, str(exc))]
            except Exception as exc:  # one unreadable file must not stop the directory
                err = _classify_parse_error(exc)
                got = [], [Rejection(entry.name, err.reason, f"{entry.name}: {err.detail}")]
        records += got[0]
        rejected += got[1]
        reasons = Counter(r.reason.value for r in got[1])
        fates.append(FileFate(entry.name, fmt or "", len(got[0]), dict(sorted(reasons.items()))))
    return records, rejected, fates


def _atoms_props(info: dict) -> dict[str, float | str]:
    props: dict[str, float | str] = {}
    if (g := _property_value(info.get("band_gap"))) is not None:
        props["band_gap"] = g
    if (h := _property_value(info.get("e_above_hull"))) is not None:
        props["e_above_hull"] = h
    for key in MAGNETIC_COLUMNS:
        if (m := _magnetic_value(info.get(key))) is not None:
            props["magnetic_ordering"] = m
    return props


def _read_ase(path: Path, options: FilterOptions) -> tuple[list[CrystalRecord], list[Rejection]]:
    # ASE's readers and pymatgen's adaptor cost ~0.6 s to import; every command imports this
    # module (the CLI's split loading), and only ASE files need them
    from ase.io import read as read_ase
    from pymatgen.io.ase import AseAtomsAdaptor

    records: list[CrystalRecord] = []
    rejected: list[Rejection] = []
    items: list[tuple[str, object, dict]] = []
    try:
        if path.suffix.lower() == ".db":
            from ase.db import connect  # 0.5 s to import; only ASE databases need it

            _check_ase_db(path)
            for row in connect(path).select():
                info = dict(row.key_value_pairs)
                item_id = str(info.get("material_id", f"{path.name}:{row.id}"))
                items.append((item_id, row.toatoms(), info))
        else:
            for k, atoms in enumerate(read_ase(path, index=":")):
                info = dict(atoms.info)
                item_id = str(info.get("material_id", info.get("id", f"{path.name}:{k}")))
                items.append((item_id, atoms, info))
    except InvalidCrystal as err:
        return records, [Rejection(path.name, err.reason, f"{path.name}: {err.detail}")]
    except Exception as exc:
        raise ValueError(f"{path}: ASE cannot read this file ({exc})") from exc
    for item_id, atoms, info in items:
        try:
            if not all(atoms.pbc):  # type: ignore[attr-defined]
                raise InvalidCrystal(RejectReason.UNPARSABLE, "not periodic in all directions")
            structure = AseAtomsAdaptor.get_structure(atoms)  # type: ignore[arg-type]
        except InvalidCrystal as err:
            rejected.append(Rejection(item_id, err.reason, err.detail))
            continue
        except Exception as exc:
            err = _classify_parse_error(exc)
            rejected.append(Rejection(item_id, err.reason, err.detail))
            continue
        _accept(item_id, structure, _atoms_props(info), options, records, rejected)
    return records, rejected


def _check_ase_db(path: Path) -> None:
    """Refuse a ``.db`` that is not an ASE database before ASE opens it.

    ASE's ``connect`` creates its tables in any SQLite file it is given, an empty file
    included, so loading would write into the user's file; this look is read-only.
    """
    if path.stat().st_size == 0:
        raise InvalidCrystal(RejectReason.EMPTY, "empty file (no ASE database)")
    uri = f"{path.resolve().as_uri()}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as con:
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master")}
    if "systems" not in tables:
        raise InvalidCrystal(
            RejectReason.UNPARSABLE, "an SQLite file but not an ASE database (no systems table)"
        )


_READERS: dict[str, Callable[[Path, FilterOptions], tuple[list[CrystalRecord], list[Rejection]]]]
_READERS = {
    "csv": _read_csv,
    "cif": _read_structure_file,
    "poscar": _read_structure_file,
    "ase": _read_ase,
}


def _read_file(
    path: Path, fmt: str, options: FilterOptions
) -> tuple[list[CrystalRecord], list[Rejection]]:
    """One file in format ``fmt``; a file holding no item at all (a CSV header without rows, a
    whitespace-only extxyz, an ASE database without rows) is one ``empty`` rejection, so that
    it is not dropped without a word."""
    records, rejected = _READERS[fmt](path, options)
    if not records and not rejected:
        rejected = [Rejection(path.name, RejectReason.EMPTY, f"{path.name}: no crystal in it")]
    return records, rejected


def _read_any(
    path: Path, options: FilterOptions
) -> tuple[list[CrystalRecord], list[Rejection], list[FileFate] | None]:
    if path.is_dir():
        return _read_directory(path, options)
    return (*_read_file(path, _file_format(path) or "ase", options), None)


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where parsed tables are cached: ``$PCCD_CACHE_DIR`` or ``~/.cache/pccd``."""
    return Path(os.environ.get("PCCD_CACHE_DIR", Path.home() / ".cache" / "pccd"))


def _source_digest(path: Path) -> str:
    """Content hash of a file, or of every entry (name + bytes) of a directory."""
    h = hashlib.sha256()
    entries = sorted(path.iterdir()) if path.is_dir() else [path]
    for f in entries:
        h.update(f.name.encode())
        if not f.is_file():
            continue
        try:
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        except OSError as exc:  # unreadable: the load rejects it; the key still changes with it
            h.update(repr(exc).encode())
    return h.hexdigest()


def _cache_key(path: Path, options: FilterOptions) -> str:
    payload = json.dumps(
        {"v": CACHE_VERSION, "src": _source_digest(path), "filter": asdict(options)},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _save_cache(
    file: Path, table: CrystalTable, rejected: list[Rejection], files: list[FileFate] | None
) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(
        tmp,
        ids=table.ids.astype(str),
        lattices=table.lattices,
        offsets=table.offsets,
        frac_coords=table.frac_coords,
        numbers=table.numbers,
        band_gap=table.band_gap,
        magnetic=table.magnetic,
        e_above_hull=table.e_above_hull,
        rej_ids=np.array([r.id for r in rejected], dtype=str),
        rej_reasons=np.array([r.reason.value for r in rejected], dtype=str),
        rej_details=np.array([r.detail for r in rejected], dtype=str),
        **({} if files is None else {"files": np.array(json.dumps([asdict(f) for f in files]))}),
    )
    os.replace(tmp, file)  # atomic: an interrupted write never leaves a corrupt cache


def _load_cache(file: Path) -> tuple[CrystalTable, list[Rejection], list[FileFate] | None]:
    with np.load(file, allow_pickle=False) as z:
        table = CrystalTable(
            ids=z["ids"].astype(object),
            lattices=z["lattices"],
            offsets=z["offsets"],
            frac_coords=z["frac_coords"],
            numbers=z["numbers"],
            band_gap=z["band_gap"],
            magnetic=z["magnetic"],
            e_above_hull=z["e_above_hull"],
        )
        rejected = [
            Rejection(str(i), RejectReason(r), str(d))
            for i, r, d in zip(z["rej_ids"], z["rej_reasons"], z["rej_details"], strict=True)
        ]
        files = [FileFate(**f) for f in json.loads(str(z["files"]))] if "files" in z else None
    return table, rejected, files


def load(
    path: str | os.PathLike[str],
    options: FilterOptions = FilterOptions(),
    *,
    cache: bool = True,
) -> LoadResult:
    """Load crystals from a CSV, CIF, POSCAR or ASE-readable file, or a directory of them.

    Args:
        path: the source.
        options: the filter (paper defaults).
        cache: reuse / write a parsed copy under :func:`cache_dir`, keyed by the source's content
            hash and the filter options, so a second load of the 41k training set takes seconds.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file as a whole cannot be read (individual bad items are only rejected;
            in a directory, so is a whole file).
    """
    src = Path(path)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or directory")
    cache_file = cache_dir() / f"{src.name}-{_cache_key(src, options)}.npz" if cache else None
    if cache_file is not None and cache_file.exists():
        try:
            table, rejected, files = _load_cache(cache_file)
            if src.is_dir() and files is None:
                raise KeyError("files")  # written before directories kept every file's fate
            return LoadResult(str(src), table, rejected, from_cache=True, files=files)
        except (OSError, ValueError, KeyError, TypeError):
            cache_file.unlink(missing_ok=True)  # unreadable cache: rebuild below
    records, rejected, files = _read_any(src, options)
    table = CrystalTable.from_records(records)
    if cache_file is not None:
        try:
            _save_cache(cache_file, table, rejected, files)
        except OSError as exc:
            warnings.warn(f"could not write cache {cache_file}: {exc}", stacklevel=2)
    return LoadResult(str(src), table, rejected, files=files)


def summarize(result: LoadResult) -> dict[str, object]:
    """Counts, rejection reasons and element / size histograms of a load (``pccd data inspect``)."""
    table = result.table
    sizes = Counter(int(n) for n in table.num_sites())
    element_counts: Counter[str] = Counter()
    n_elements: Counter[int] = Counter()
    for i in range(len(table)):
        zs = np.unique(table.sites(i)[1])
        n_elements[len(zs)] += 1
        element_counts.update(Element.from_Z(int(z)).symbol for z in zs)
    files = {} if result.files is None else {"files": [asdict(f) for f in result.files]}
    return {
        "source": result.source,
        "loaded": len(table),
        "rejected": len(result.rejected),
        "reasons": dict(result.rejection_counts().most_common()),
        "sites": dict(sorted(sizes.items())),
        "n_elements": dict(sorted(n_elements.items())),
        "elements": dict(element_counts.most_common()),
        "with_band_gap": int(np.sum(~np.isnan(table.band_gap))),
        "with_magnetic": int(np.sum(table.magnetic >= 0)),
        "with_stability": int(np.sum(table.stability >= 0)),
        "stable": int(np.sum(table.stability == 1)),
        **files,
    }
