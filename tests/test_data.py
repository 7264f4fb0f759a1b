"""Data layer: every source format, every rejection reason, the cache, and `pccd data inspect`."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ase.db import connect
from ase.io import write
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from pccd import data
from pccd.cli import main
from tests.conftest import nacl, silicon, triclinic16, unary_fe, wurtzite

SHARED_VAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "mp_pccd" / "val.csv.gz"

CIF_TEMPLATE = """data_x
_symmetry_space_group_name_H-M 'P 1'
_cell_length_a {a}
_cell_length_b 4.0
_cell_length_c 4.0
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
 {el} {el}1 0 0 0 {occ}
 Cl Cl1 {x} {x} {x} 1
"""


def cif(el="Na", occ=1, a=4.0, x=0.5) -> str:
    return CIF_TEMPLATE.format(el=el, occ=occ, a=a, x=x)


def big_cell() -> Structure:
    return Structure(
        Lattice.cubic(10), ["Cu"] * 17, [[i / 17, 0.5 * (i % 2), 0.25] for i in range(17)]
    )


def quaternary() -> Structure:
    return Structure(
        Lattice.cubic(6),
        ["Na", "Cl", "K", "Br"],
        [[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]],
    )


BAD_ROWS = {
    "bad-garbage": ("this is not a CIF", data.RejectReason.UNPARSABLE),
    "bad-partial": (cif(occ=0.5), data.RejectReason.PARTIAL_OCCUPANCY),
    "bad-unknown": (cif(el="Xx"), data.RejectReason.UNKNOWN_ELEMENT),
    "bad-overlap": (cif(x=0.05), data.RejectReason.OVERLAPPING_ATOMS),
    "bad-sites": (big_cell().to(fmt="cif"), data.RejectReason.TOO_MANY_SITES),
    "bad-elements": (quaternary().to(fmt="cif"), data.RejectReason.TOO_MANY_ELEMENTS),
    "bad-volume": (cif(a=0.0), None),  # zero-length cell: non-physical, never loaded
}


def write_csv(path: Path) -> None:
    rows = [
        {
            "material_id": "good-nacl",
            "band_gap": 5.0,
            "cif": nacl().to(fmt="cif"),
            "ordering": "NM",
        },
        {
            "material_id": "good-si",
            "band_gap": np.nan,
            "cif": silicon().to(fmt="cif"),
            "ordering": "FM",
        },
        {
            "material_id": "good-tri",
            "band_gap": 0.0,
            "cif": triclinic16().to(fmt="cif"),
            "ordering": None,
        },
    ]
    rows += [
        {"material_id": k, "band_gap": 1.0, "cif": v[0], "ordering": None}
        for k, v in BAD_ROWS.items()
    ]
    pd.DataFrame(rows).to_csv(path)


def assert_bad_rows(result: data.LoadResult) -> None:
    reasons = {r.id: r.reason for r in result.rejected}
    for item_id, (_, reason) in BAD_ROWS.items():
        assert item_id in reasons, f"{item_id} was not rejected"
        if reason is not None:
            assert reasons[item_id] is reason, (item_id, reasons[item_id])
    assert reasons["bad-volume"] is data.RejectReason.NONPHYSICAL_CELL  # a length of 0 Å
    assert all(r.detail for r in result.rejected)


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_csv_loads_good_and_reports_bad(tmp_path, suffix):
    path = tmp_path / f"set{suffix}"
    write_csv(tmp_path / "set.csv")
    if suffix == ".csv.gz":
        path.write_bytes(gzip.compress((tmp_path / "set.csv").read_bytes()))
    result = data.load(path)
    assert sorted(r.id for r in result.records) == ["good-nacl", "good-si", "good-tri"]
    assert_bad_rows(result)
    by_id = {r.id: r for r in result.records}
    assert by_id["good-nacl"].properties == {"band_gap": 5.0, "magnetic_ordering": "NM"}
    assert by_id["good-si"].properties == {"magnetic_ordering": "FM"}  # missing gap stays missing
    assert by_id["good-tri"].structure.composition.reduced_formula == "LiFeO2"
    assert len(by_id["good-tri"].structure) == 16


def test_e_above_hull_column_gives_stability_labels(tmp_path):
    """The MP splits' ``e_above_hull`` column (eV/atom, empty without an energy) becomes the
    stability label: below 0.08 stable (1), at or above unstable (0), missing -1."""
    hulls = {"nacl": 0.0, "si": 0.079, "zno": 0.08, "tri": np.nan, "fe": 1.2}
    makers = {"nacl": nacl, "si": silicon, "zno": wurtzite, "tri": triclinic16, "fe": unary_fe}
    rows = [
        {"material_id": k, "band_gap": 1.0, "e_above_hull": e, "cif": makers[k]().to(fmt="cif")}
        for k, e in hulls.items()
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "set.csv")
    result = data.load(tmp_path / "set.csv")
    table = result.table
    assert list(table.ids) == list(hulls)
    assert table.stability.dtype == np.int8
    assert table.stability.tolist() == [1, 1, 0, -1, 0]
    assert table.e_above_hull[2] == 0.08 and np.isnan(table.e_above_hull[3])
    assert table.properties(1) == {"band_gap": 1.0, "e_above_hull": 0.079}
    assert "e_above_hull" not in table.properties(3)  # missing stays missing
    cached = data.load(tmp_path / "set.csv")  # the npz cache keeps the energies
    assert cached.from_cache and cached.table.stability.tolist() == [1, 1, 0, -1, 0]
    sub = table.subset([4, 0])
    assert sub.stability.tolist() == [0, 1] and sub.e_above_hull.tolist() == [1.2, 0.0]
    again = data.CrystalTable.from_records(result.records)  # records carry it through
    assert again.stability.tolist() == [1, 1, 0, -1, 0]
    summary = data.summarize(result)
    assert summary["with_stability"] == 4 and summary["stable"] == 2
    # a source without the column: every label unknown
    write_csv(tmp_path / "plain.csv")
    assert (data.load(tmp_path / "plain.csv").table.stability == -1).all()


def test_cache_of_an_older_version_is_not_reused(tmp_path, monkeypatch):
    """Caches written before e_above_hull was kept have another key, so they are rebuilt
    instead of loading tables without energies."""
    path = tmp_path / "set.csv"
    write_csv(path)
    current = data.CACHE_VERSION
    monkeypatch.setattr(data, "CACHE_VERSION", current - 1)
    data.load(path)
    assert data.load(path).from_cache
    monkeypatch.setattr(data, "CACHE_VERSION", current)
    assert not data.load(path).from_cache


def test_filters_are_configurable(tmp_path):
    write_csv(tmp_path / "set.csv")
    result = data.load(tmp_path / "set.csv", data.FilterOptions(max_sites=20, max_elements=4))
    ids = {r.id for r in result.records}
    assert {"bad-sites", "bad-elements"} <= ids
    result = data.load(tmp_path / "set.csv", data.FilterOptions(max_sites=8))
    assert "good-tri" not in {r.id for r in result.records}
    assert any(
        r.id == "good-tri" and r.reason is data.RejectReason.TOO_MANY_SITES for r in result.rejected
    )


def write_mixed_directory(d: Path) -> None:
    """One file of every kind the loader reads, a good and a bad one where it matters."""
    nacl().to(filename=str(d / "nacl.cif"))
    silicon().to(filename=str(d / "POSCAR"))
    wurtzite().to(filename=str(d / "zno.vasp"), fmt="poscar")
    (d / "broken.cif").write_text("data_broken\n_cell_length_a 3\nloop_\n_atom_site_label\n")
    (d / "partial.cif").write_text(cif(occ=0.5))
    (d / "notes.txt").write_text("not a structure file")
    atoms = [AseAtomsAdaptor.get_atoms(s) for s in (nacl(), silicon(), quaternary())]
    write(d / "set.extxyz", atoms)
    write(d / "si.xyz", atoms[1])  # ASE writes extended XYZ: the cell is kept
    write(d / "zno.traj", AseAtomsAdaptor.get_atoms(wurtzite()))
    (d / "molecule.xyz").write_text("2\n\nH 0 0 0\nH 0 0 0.74\n")  # plain XYZ: no cell
    (d / "garbled.extxyz").write_text("3\nnot a header\n")
    connect(d / "set.db").write(atoms[0], material_id="mp-nacl")
    (d / "empty.db").write_bytes(b"")
    (d / "subdir").mkdir()


#: what each file of :func:`write_mixed_directory` gives: (format, loaded, rejections by reason)
MIXED_FATES = {
    "POSCAR": ("poscar", 1, {}),
    "broken.cif": ("cif", 0, {"unparsable": 1}),
    "empty.db": ("ase", 0, {"empty": 1}),
    "garbled.extxyz": ("ase", 0, {"unparsable": 1}),
    "molecule.xyz": ("ase", 0, {"unparsable": 1}),
    "nacl.cif": ("cif", 1, {}),
    "notes.txt": ("", 0, {"unsupported_format": 1}),
    "partial.cif": ("cif", 0, {"partial_occupancy": 1}),
    "set.db": ("ase", 1, {}),
    "set.extxyz": ("ase", 2, {"too_many_elements": 1}),
    "si.xyz": ("ase", 1, {}),
    "subdir": ("", 0, {"unsupported_format": 1}),
    "zno.traj": ("ase", 1, {}),
    "zno.vasp": ("poscar", 1, {}),
}


def test_every_file_of_a_mixed_directory_is_answered(tmp_path):
    write_mixed_directory(tmp_path)
    result = data.load(tmp_path)
    fates = {f.name: (f.format, f.loaded, f.rejected) for f in result.files}
    assert fates == MIXED_FATES
    loaded = ["POSCAR", "nacl", "zno", "set.extxyz:0", "set.extxyz:1", "si.xyz:0", "mp-nacl"]
    assert sorted(r.id for r in result.records) == sorted([*loaded, "zno.traj:0"])
    reasons = {r.id: r.reason.value for r in result.rejected}
    assert reasons == {
        "broken": "unparsable",
        "partial": "partial_occupancy",
        "notes.txt": "unsupported_format",
        "subdir": "unsupported_format",
        "set.extxyz:2": "too_many_elements",
        "molecule.xyz:0": "unparsable",
        "garbled.extxyz": "unparsable",
        "empty.db": "empty",
    }
    assert all(r.detail for r in result.rejected)
    assert (tmp_path / "empty.db").stat().st_size == 0  # ASE would have written its tables
    # the cache keeps every file's fate; any new entry, even an unsupported one, invalidates it
    again = data.load(tmp_path)
    assert again.from_cache and again.files == result.files
    (tmp_path / "more.txt").write_text("x")
    third = data.load(tmp_path)
    assert not third.from_cache and len(third.files) == len(MIXED_FATES) + 1


def test_a_directory_reads_csv_files_and_an_unreadable_one_is_a_rejection(tmp_path):
    d = tmp_path / "set"
    d.mkdir()
    write_csv(d / "set.csv")
    (d / "other.csv").write_text("a,b\n1,2\n")  # no cif column: the whole file
    (d / "foreign.db").write_bytes(sqlite_file(tmp_path / "x.sqlite"))
    result = data.load(d)
    fates = {f.name: (f.loaded, f.rejected) for f in result.files}
    assert fates["set.csv"][0] == 3 and sum(fates["set.csv"][1].values()) == len(BAD_ROWS)
    assert fates["other.csv"] == (0, {"unparsable": 1})
    assert fates["foreign.db"] == (0, {"unparsable": 1})
    assert "no 'cif' column" in next(r.detail for r in result.rejected if r.id == "other.csv")
    assert "not an ASE database" in next(r.detail for r in result.rejected if r.id == "foreign.db")


def sqlite_file(path: Path) -> bytes:
    """The bytes of an SQLite database that is not an ASE one."""
    import sqlite3

    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE t (x)")
    return path.read_bytes()


def test_inspect_lists_every_file_of_a_directory(tmp_path, capsys):
    write_mixed_directory(tmp_path)
    assert main(["data", "inspect", str(tmp_path), "--show", "20"]) == 0
    out = capsys.readouterr().out
    assert f"8 loaded, 8 rejected\nfiles: {len(MIXED_FATES)}\n" in out
    assert "  notes.txt (not read): unsupported_format 1\n" in out
    assert "  set.extxyz (ase): 2 loaded, too_many_elements 1\n" in out
    assert "  nacl.cif (cif): 1 loaded\n" in out
    assert all(f"  {name} (" in out for name in MIXED_FATES)
    assert "unsupported_format   2" in out  # the counts per reason
    assert main(["data", "inspect", str(tmp_path), "--show", "3"]) == 0
    assert f"... {len(MIXED_FATES) - 3} more (--show {len(MIXED_FATES)})" in capsys.readouterr().out
    assert main(["data", "inspect", str(tmp_path), "--json"]) == 0
    files = json.loads(capsys.readouterr().out)["files"]
    assert {f["name"]: (f["format"], f["loaded"], f["rejected"]) for f in files} == MIXED_FATES


def test_extxyz_and_ase_db(tmp_path):
    atoms = [AseAtomsAdaptor.get_atoms(s) for s in (nacl(), silicon(), quaternary())]
    atoms[0].info["band_gap"] = 4.5
    atoms[1].info["magnetic_ordering"] = "AFM"
    atoms[1].info["e_above_hull"] = 0.25
    write(tmp_path / "set.extxyz", atoms)
    result = data.load(tmp_path / "set.extxyz")
    assert len(result) == 2 and result.rejected[0].reason is data.RejectReason.TOO_MANY_ELEMENTS
    assert result.records[0].properties == {"band_gap": 4.5}
    assert result.records[1].properties == {"magnetic_ordering": "AFM", "e_above_hull": 0.25}
    assert result.table.stability.tolist() == [-1, 0]
    db = connect(tmp_path / "set.db")
    db.write(atoms[0], material_id="mp-nacl", band_gap=4.5, e_above_hull=0.01)
    db.write(atoms[2], material_id="mp-quat")
    result = data.load(tmp_path / "set.db")
    assert [r.id for r in result.records] == ["mp-nacl"]
    assert result.records[0].properties["band_gap"] == 4.5
    assert result.table.stability.tolist() == [1]
    assert [r.id for r in result.rejected] == ["mp-quat"]


def test_unreadable_file_and_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        data.load(tmp_path / "nope.csv")
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="cif"):
        data.load(tmp_path / "x.csv")


def test_cache_is_used_and_invalidated(tmp_path):
    path = tmp_path / "set.csv"
    write_csv(path)
    first = data.load(path)
    assert not first.from_cache
    second = data.load(path)
    assert second.from_cache
    assert list(second.table.ids) == list(first.table.ids)
    assert np.array_equal(second.table.frac_coords, first.table.frac_coords)
    assert [(r.id, r.reason) for r in second.rejected] == [(r.id, r.reason) for r in first.rejected]
    assert not data.load(path, data.FilterOptions(max_sites=8)).from_cache  # options changed
    df = pd.read_csv(path, index_col=0).iloc[:2]
    df.to_csv(path)  # source changed
    third = data.load(path)
    assert not third.from_cache and len(third) == 2
    assert not data.load(path, cache=False).from_cache


def test_table_round_trip_and_subset():
    records = [
        data.CrystalRecord(f"r{i}", s, {"band_gap": float(i)})
        for i, s in enumerate([nacl(), silicon(), wurtzite()])
    ]
    table = data.CrystalTable.from_records(records)
    assert table.num_sites().tolist() == [8, 2, 4]
    sub = table.subset([2, 0])
    assert list(sub.ids) == ["r2", "r0"]
    assert sub.structure(1) == nacl()
    assert sub.properties(0) == {"band_gap": 2.0}


def load_structures(structures: list[Structure]) -> data.LoadResult:
    """In-memory structures through the filter that :func:`pccd.data.load` applies to files,
    each named by its position (the library itself only reads files)."""
    records: list[data.CrystalRecord] = []
    rejected: list[data.Rejection] = []
    for k, structure in enumerate(structures):
        try:
            data.check_structure(structure)
        except data.InvalidCrystal as err:
            rejected.append(data.Rejection(str(k), err.reason, err.detail))
        else:
            records.append(data.CrystalRecord(str(k), structure, {}))
    return data.LoadResult("<memory>", data.CrystalTable.from_records(records), rejected)


def test_load_structures_in_memory():
    result = load_structures([nacl(), quaternary(), silicon()])
    assert len(result) == 2 and result.rejected[0].id == "1"


def test_inspect_cli(tmp_path, capsys):
    write_csv(tmp_path / "set.csv")
    assert main(["data", "inspect", str(tmp_path / "set.csv")]) == 0
    out = capsys.readouterr().out
    assert "3 loaded, 7 rejected" in out
    assert "partial_occupancy" in out and "bad-partial" in out
    assert "sites per cell" in out and "Na" in out
    assert "stability (E_hull) for 0 (0 stable)" in out
    assert main(["data", "inspect", str(tmp_path / "set.csv"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["sites"] == {"2": 1, "8": 1, "16": 1}
    assert summary["n_elements"] == {"1": 1, "2": 1, "3": 1}
    assert main(["data", "inspect", str(tmp_path / "missing.csv")]) == 2


@pytest.mark.skipif(not SHARED_VAL.exists(), reason="shared data not beside the checkout")
def test_real_val_split_slice_loads_fast_from_cache(tmp_path):
    df = pd.read_csv(SHARED_VAL, index_col=0).iloc[:300]
    df.to_csv(tmp_path / "slice.csv")
    first = data.load(tmp_path / "slice.csv")
    assert len(first) + len(first.rejected) == 300
    t = time.perf_counter()
    again = data.load(tmp_path / "slice.csv")
    assert again.from_cache and time.perf_counter() - t < 1.0
    assert len(again) == len(first)


# ---- non-physical cells: a reason of their own ---------------------------------------------
def _nacl_cif() -> str:
    s = Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return s.to(fmt="cif")


def _set_cell(text: str, **values: str) -> str:
    lines = []
    for line in text.splitlines():
        key = line.split()[0] if line.split() else ""
        name = key.removeprefix("_cell_")
        lines.append(f"{key}   {values[name]}" if name in values else line)
    return "\n".join(lines) + "\n"


NONPHYSICAL = {
    "huge_length": {"length_a": "1000000"},
    "negative_length": {"length_b": "-5.6"},
    "zero_length": {"length_c": "0"},
    "angle_180": {"angle_alpha": "180"},
    "negative_angle": {"angle_gamma": "-90"},
    "impossible_angle_triple": {"angle_alpha": "170", "angle_beta": "30", "angle_gamma": "90"},
    "tiny_volume_per_atom": {"length_a": "0.9", "length_b": "0.9", "length_c": "0.9"},
    "huge_volume_per_atom": {"length_a": "250", "length_b": "250", "length_c": "250"},
}


@pytest.mark.parametrize("case", sorted(NONPHYSICAL))
def test_nonphysical_cells_are_rejected_with_their_own_reason(case, tmp_path):
    bad = _set_cell(_nacl_cif(), **NONPHYSICAL[case])
    rows = [{"material_id": "good", "cif": _nacl_cif()}, {"material_id": case, "cif": bad}]
    pd.DataFrame(rows).to_csv(tmp_path / "cells.csv")
    result = data.load(tmp_path / "cells.csv", cache=False)
    assert [r.id for r in result] == ["good"]
    assert [(r.id, r.reason) for r in result.rejected] == [
        (case, data.RejectReason.NONPHYSICAL_CELL)
    ]
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / f"{case}.cif").write_text(bad)
    result = data.load(tmp_path / "dir", cache=False)
    assert len(result) == 0
    assert result.rejected[0].reason == data.RejectReason.NONPHYSICAL_CELL


def test_cell_limits_keep_ordinary_and_long_cells():
    from tests.conftest import KNOWN

    for make in KNOWN.values():
        data.check_structure(make())  # none of the reference crystals is rejected
        data.check_cif_cell(make().to(fmt="cif"))


@pytest.mark.parametrize("kind", ["truncated", "not_gzip"])
def test_damaged_gzip_is_a_value_error_naming_the_file(kind, tmp_path):
    plain = tmp_path / "x.csv"
    pd.DataFrame([{"material_id": "a", "cif": _nacl_cif()}] * 50).to_csv(plain)
    good = gzip.compress(plain.read_bytes())
    bad = tmp_path / f"{kind}.csv.gz"
    bad.write_bytes(good[: len(good) // 2] if kind == "truncated" else plain.read_bytes())
    with pytest.raises(ValueError, match=bad.name):
        data.load(bad, cache=False)


def test_element_list_groups_put_crystals_of_one_element_list_together():
    structures = [nacl(), silicon(), nacl(), unary_fe()]
    table = data.CrystalTable.from_records(
        [data.CrystalRecord(f"c{i}", s, {}) for i, s in enumerate(structures)]
    )
    group, lists = table.element_list_groups()
    assert group.tolist() == [0, 1, 0, 2]
    assert lists == [(11, 17), (14,), (26,)]  # ascending Z, in order of first appearance
