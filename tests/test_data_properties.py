"""Property-based tests of the loader: whatever bytes a file holds, it is answered.

Random bytes, truncated and mutated real files (CIF, POSCAR, extxyz, CSV, ASE db), alone or in
a directory: a load never raises anything but the documented ``ValueError`` for a single file
that cannot be read at all, and in a directory every entry is a record or a rejection with a
reason (never dropped without a word).
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import pandas as pd
from ase.db import connect
from ase.io import write
from hypothesis import example, given
from hypothesis import strategies as st
from pymatgen.io.ase import AseAtomsAdaptor

from pccd import data
from tests.conftest import nacl, silicon, triclinic16, wurtzite
from tests.test_data import SHARED_VAL, cif


def _real_files() -> dict[str, bytes]:
    """One real file of every format the loader reads."""
    atoms = [AseAtomsAdaptor.get_atoms(s) for s in (nacl(), silicon(), wurtzite())]
    buffer = io.StringIO()
    write(buffer, atoms, format="extxyz")
    rows = (
        pd.read_csv(SHARED_VAL, index_col=0, nrows=2)
        if SHARED_VAL.exists()
        else pd.DataFrame({"material_id": ["x"], "cif": [cif()]})
    )
    files = {
        "nacl.cif": nacl().to(fmt="cif").encode(),
        "tri.cif": triclinic16().to(fmt="cif").encode(),
        "mp.cif": str(rows["cif"].iloc[0]).encode(),
        "POSCAR": silicon().to(fmt="poscar").encode(),
        "zno.vasp": wurtzite().to(fmt="poscar").encode(),
        "set.extxyz": buffer.getvalue().encode(),
        "si.xyz": buffer.getvalue().split("\n2\n")[0].encode(),
        "split.csv": rows.to_csv().encode(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "set.db"
        connect(db).write(atoms[0], material_id="mp-nacl")
        files["set.db"] = db.read_bytes()
    return files


REAL = _real_files()
NAMES = [*REAL, "notes.txt", "README", "x.json", "CONTCAR", "a.poscar", "b.csv.gz", "c.traj"]


def assert_answered(directory: Path, contents: dict[str, bytes]) -> None:
    """Write ``contents`` into ``directory``; the load answers every file, alone and together."""
    for name, content in contents.items():
        (directory / name).write_bytes(content)
    result = data.load(directory, cache=False)
    fates = {f.name: f for f in result.files}
    assert sorted(fates) == sorted(contents)
    for fate in fates.values():
        assert fate.loaded + sum(fate.rejected.values()) >= 1, fate  # never silently dropped
    assert sum(f.loaded for f in fates.values()) == len(result)
    assert sum(sum(f.rejected.values()) for f in fates.values()) == len(result.rejected)
    assert all(isinstance(r.reason, data.RejectReason) and r.detail for r in result.rejected)
    for name, content in contents.items():  # the loader reads, never writes, the user's files
        assert (directory / name).read_bytes() == content, name
    for name in contents:
        try:
            alone = data.load(directory / name, cache=False)
        except ValueError as exc:  # the documented answer for a file unreadable as a whole
            assert name in str(exc), exc
            assert not isinstance(exc, data.InvalidCrystal), exc  # it must name the file
            continue
        assert len(alone) + len(alone.rejected) >= 1, name


@given(st.dictionaries(st.sampled_from(NAMES), st.binary(max_size=400), min_size=1, max_size=6))
# shrunk failures found by these tests, kept as regressions: each was once a file that gave
# neither a crystal nor a rejection (a whitespace-only extxyz is zero frames to ASE; a truncated
# CSV kept only its header), or one the loader wrote into (ASE creates its tables in an empty .db)
@example({"set.extxyz": b"\n"})
@example({"split.csv": b",material_id,cif\n"})
@example({"set.db": b""})
def test_random_bytes_are_answered(contents):
    with tempfile.TemporaryDirectory() as tmp:
        assert_answered(Path(tmp), contents)


@given(
    st.lists(
        st.tuples(st.sampled_from(sorted(REAL)), st.floats(0.0, 1.0)),
        min_size=1,
        max_size=4,
        unique_by=lambda t: t[0],
    )
)
def test_truncated_real_files_are_answered(cuts):
    contents = {name: REAL[name][: int(len(REAL[name]) * frac)] for name, frac in cuts}
    with tempfile.TemporaryDirectory() as tmp:
        assert_answered(Path(tmp), contents)


@st.composite
def mutated(draw) -> tuple[str, bytes]:
    """A real file with a few bytes flipped, inserted, deleted or a line repeated."""
    name = draw(st.sampled_from(sorted(REAL)))
    content = bytearray(REAL[name])
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, max(len(content) - 1, 0)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "repeat_line", "digit"]))
        if op == "flip" and content:
            content[at] = draw(st.integers(0, 255))
        elif op == "insert":
            content[at:at] = draw(st.binary(min_size=1, max_size=12))
        elif op == "delete":
            del content[at : at + draw(st.integers(1, 40))]
        elif op == "repeat_line":
            lo = content.rfind(b"\n", 0, at) + 1
            hi = content.find(b"\n", at)
            line = content[lo : hi + 1 if hi >= 0 else len(content)]
            content[lo:lo] = line
        else:  # a number changed: a cell length, a coordinate, a count
            content[at:at] = draw(st.sampled_from([b"-", b"0", b"9e9", b"nan", b"-1", b"1e-9"]))
    return name, bytes(content)


@given(st.lists(mutated(), min_size=1, max_size=4, unique_by=lambda t: t[0]))
def test_mutated_real_files_are_answered(files):
    with tempfile.TemporaryDirectory() as tmp:
        assert_answered(Path(tmp), dict(files))
