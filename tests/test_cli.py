"""The command line: every invalid argument is one ``error:`` line, exit code 2, nothing written;
the commands without tests elsewhere (batch, references, roundtrip, export) run end to end; an
interrupted screen resumes without losing or duplicating a row."""

from __future__ import annotations

import argparse
import ast
import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from pccd.cli import main
from tests.conftest import KNOWN, nacl, silicon, wurtzite

EMT = "ase.calculators.emt:EMT"
REPO = Path(__file__).resolve().parents[1]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def cif_dir(tmp_path) -> Path:
    directory = tmp_path / "cifs"
    directory.mkdir()
    for name, make in [("nacl", nacl), ("si", silicon), ("zno", wurtzite)]:
        make().to(filename=str(directory / f"{name}.cif"))
    return directory


def write_split(path: Path, structures: dict[str, Structure]) -> Path:
    rows = [
        {"material_id": k, "band_gap": 1.0, "cif": s.to(fmt="cif"), "nelements": s.n_elems,
         "elements": json.dumps(sorted(e.symbol for e in s.composition.elements))}
        for k, s in structures.items()
    ]  # fmt: skip
    pd.DataFrame(rows).to_csv(path)
    return path


# ---- invalid arguments: exit 2, one line, nothing written -----------------------------------
INVALID = [
    (["generate", "--elements", "Na,Cl", "-n", "0"], "-n"),
    (["generate", "--elements", "Na,Cl", "-n", "-3"], "-n"),
    (["generate", "--elements", "Na,Cl", "--batch-size", "0"], "--batch-size"),
    (["generate", "--elements", "Na,Cl", "--steps", "0"], "--steps"),
    (["generate", "--elements", "Na,Cl", "--guidance", "nan"], "--guidance"),
    (["generate", "--elements", "Na,Cl", "--guidance", "inf"], "--guidance"),
    (["generate", "--elements", "Na,Cl", "--threads", "-1"], "--threads"),
    (["generate", "--elements", "Na,Cl", "--band-gap", "-1"], "--band-gap"),
    (["generate", "--elements", "Na,Cl", "--stability", "metastable"], "--stability"),
    (["generate", "--elements", "Na,Cl", "--stability", "Stable"], "--stability"),
    (
        ["generate", "--elements", "Na,Cl", "--stability", "stable", "--model", "pccd-cpu"],
        "not trained on stability",
    ),
    (
        ["generate", "--elements", "Na,Cl", "--repulsion", "0.8", "--model", "pccd-atoms"],
        "point-cloud",
    ),
    (["generate", "--elements", "Na,Cl", "--guide", "stabilty", "--guidance", "2"], "stabilty"),
    (["generate", "--elements", "Na,Cl", "--format", "cif,xyz"], "--format"),
    (["generate", "--elements", "Na,Cl", "--device", "tpu"], "--device"),
    (["generate", "--elements", "Na,Cl", "-n", "two"], "-n"),
    (["generate", "--elements", "Na,Cl", "--precision", "bf16"], "--precision"),
    (["csp", "{split}", "--precision", "float16"], "--precision"),
    (["reconstruct", "{split}", "--precision", "bf16-mixed"], "--precision"),
    (["batch", "--pool", "3", "--precision", "half"], "--precision"),
    (["generate", "--elements", "Xx,Cl"], "Xx"),
    (["generate", "--elements-from", "{tmp}/missing.csv"], "missing.csv"),
    (["csp", "{split}", "-n", "-1"], "-n"),
    (["csp", "{split}", "-k", "0"], "-k"),
    (["csp", "{split}", "--batch-size", "0"], "--batch-size"),
    (["reconstruct", "{split}", "-n", "-5"], "-n"),
    (["reconstruct", "{split}", "--batch-size", "0"], "--batch-size"),
    (["reconstruct", "{split}", "--t", "abc"], "--t"),
    (["reconstruct", "{split}", "--distances", "foo"], "--distances"),
    (["evaluate", "{cifs}", "-n", "-1"], "-n"),
    (["evaluate", "{cifs}", "--reference", "{tmp}/nope.csv"], "--reference"),
    (["evaluate", "{cifs}", "--known", "{tmp}/nope.csv"], "--known"),
    (["evaluate", "{tmp}/no-such-dir"], "no-such-dir"),
    (["screen", "{tmp}/no-such-dir"], "no-such-dir"),
    (["screen", "{cifs}", "--workers", "0"], "--workers"),
    (["screen", "{cifs}", "--fmax", "0"], "--fmax"),
    (["screen", "{cifs}", "--fmax", "-0.1"], "--fmax"),
    (["screen", "{cifs}", "--max-steps", "0"], "--max-steps"),
    (["screen", "{cifs}", "--limit", "0"], "--limit"),
    (["screen", "{cifs}", "--mlip", "mace"], "mace"),
    (["screen", "{cifs}", "--mlip", "no_such_module:f"], "no_such_module"),
    (["screen", "{cifs}", "--reference", "{tmp}/nope.csv.gz"], "--reference"),
    (["batch", "--pool", "3", "--lists", "2000"], "1793"),
    (["batch", "--pool", "3", "--lists", "0"], "--lists"),
    (["batch", "--pool", "3", "--per-list", "0"], "--per-list"),
    (["batch", "--pool", "4"], "--pool"),
    (["phonons", "{tmp}/nope.cif"], "nope.cif"),
    (["phonons", "{cifs}/nacl.cif", "--min-length", "0"], "--min-length"),
    (["train", "--data", "{split}", "--model-option", "foo=1"], "foo"),
    (["train", "--data", "{split}", "--option", "bar=1"], "bar"),
    (["train", "--data", "{split}", "--batch-size", "0"], "--batch-size"),
    (["train", "--data", "{tmp}/missing.csv"], "missing.csv"),
    (["roundtrip", "{split}", "-n", "-1"], "-n"),
    (["references", "--reference", "{tmp}/nope.csv.gz"], "nope.csv.gz"),
    (["data", "inspect", "{tmp}/nope.csv"], "nope.csv"),
    (["data", "inspect", "{split}", "--max-sites", "0"], "--max-sites"),
    (["export", "{tmp}/nope.ckpt", "{out}"], "nope.ckpt"),
    (["bogus"], "bogus"),
    ([], "command"),
]


@pytest.mark.parametrize(("argv", "fragment"), INVALID, ids=[" ".join(a) for a, _ in INVALID])
def test_invalid_arguments_fail_at_once_with_one_line(argv, fragment, tmp_path, cif_dir, capsys):
    split = write_split(tmp_path / "split.csv", {"nacl": nacl(), "si": silicon()})
    out = tmp_path / "out"
    argv = [a.format(tmp=tmp_path, split=split, cifs=cif_dir, out=out) for a in argv]
    if argv and argv[0] not in ("data", "export", "phonons", "references", "bogus"):
        argv += ["--out", str(out)]
    code, _, err = run(capsys, *argv)
    assert_user_error(code, err, fragment)
    assert not out.exists()


def test_steps_beyond_the_model_fail_before_run_json(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "gen"
    code, _, err = run(capsys, "generate", "--elements", "Na,Cl", "--steps", "5000",
                       "--model", tiny_model_dir, "--out", out)  # fmt: skip
    assert_user_error(code, err, "--steps 5000", "1000")
    assert not out.exists()
    split = write_split(tmp_path / "split.csv", {"nacl": nacl()})
    for command in (["csp", split], ["reconstruct", split]):
        code, _, err = run(capsys, *command, "--steps", "5000", "--model", tiny_model_dir,
                           "--out", out)  # fmt: skip
        assert_user_error(code, err, "--steps 5000")
        assert not out.exists()


def test_missing_model_and_damaged_model_files(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "gen"
    code, _, err = run(capsys, "generate", "--elements", "Na,Cl", "--model", tmp_path / "none",
                       "--out", out)  # fmt: skip
    assert_user_error(code, err, "none")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_model_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "pccd.json").write_text("{")
    code, _, err = run(capsys, "generate", "--elements", "Na,Cl", "--model", broken, "--out", out)
    assert_user_error(code, err, "broken")
    assert not out.exists()


def test_corrupt_run_json_names_the_file(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "gen"
    out.mkdir()
    (out / "run.json").write_text("{not json")
    code, _, err = run(capsys, "generate", "--elements", "Na,Cl", "-n", "2", "--steps", "2",
                       "--model", tiny_model_dir, "--out", out)  # fmt: skip
    assert_user_error(code, err, str(out / "run.json"))
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]


@pytest.mark.parametrize("kind", ["truncated", "not_gzip", "empty"])
def test_damaged_csv_gz_is_a_clean_error(kind, tmp_path, capsys):
    good = tmp_path / "good.csv.gz"
    write_split(tmp_path / "plain.csv", {k: f() for k, f in KNOWN.items()})
    with gzip.open(good, "wb") as fh:
        fh.write((tmp_path / "plain.csv").read_bytes())
    bad = tmp_path / f"{kind}.csv.gz"
    if kind == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "not_gzip":
        bad.write_text("material_id,cif\nx,y\n")
    else:
        bad.write_bytes(b"")
    code, _, err = run(capsys, "data", "inspect", bad)
    assert_user_error(code, err, bad.name)
    assert err.count(bad.name) == 1, err  # the library names the file; the CLI adds no second
    out = tmp_path / "gen"
    code, _, err = run(capsys, "generate", "--elements-from", bad, "--out", out)
    assert_user_error(code, err, bad.name)
    assert err.count(bad.name) == 1, err
    assert not out.exists()


def test_a_file_is_named_once_in_an_error(tmp_path, capsys):
    """The library's messages about a file start with its name (so does an OSError's): the
    CLI adds the name only to a message without it."""
    from pccd.cli.support import about

    table = tmp_path / "no_cif.csv"
    table.write_text("material_id,formula\nx,NaCl\n")
    code, _, err = run(capsys, "generate", "--elements-from", table, "--out", tmp_path / "o")
    assert_user_error(code, err, "no 'cif' column")
    assert err.count(table.name) == 1, err
    assert about("a.cif", PermissionError(13, "Permission denied", "a.cif")) == (
        "a.cif: Permission denied"
    )
    assert about("a.cif", ValueError("no structure")) == "a.cif: no structure"


def test_model_option_fails_before_data_loads(tmp_path, capsys, monkeypatch):
    import pccd.data

    def boom(*args, **kwargs):
        raise AssertionError("data loaded before the options were checked")

    monkeypatch.setattr(pccd.data, "load", boom)
    split = write_split(tmp_path / "split.csv", {"nacl": nacl()})
    for option in ("foo=1", "layout=weird", "channel_mults=[1,2]"):
        code, _, err = run(capsys, "train", "--data", split, "--out", tmp_path / "run",
                           "--model-option", option)  # fmt: skip
        assert_user_error(code, err, "--model-option")
    assert not (tmp_path / "run").exists()


def test_phonons_relaxation_failure_is_one_line(tmp_path, capsys):
    squashed = Structure(Lattice.cubic(1.2), ["Cu", "Cu"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    cif = tmp_path / "squashed.cif"
    squashed.to(filename=str(cif))
    code, _, err = run(capsys, "phonons", cif, "--mlip", EMT, "--out", tmp_path / "ph",
                       "--max-steps", "5")  # fmt: skip
    assert_user_error(code, err, "squashed.cif")


def test_missing_extra_names_the_extra(tmp_path, cif_dir, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "sevenn" else real(name, *a)
    )
    code, _, err = run(capsys, "screen", cif_dir, "--mlip", "7net-0", "--out", tmp_path / "o")
    assert_user_error(code, err, 'pip install -e ".[screen]"')
    assert not (tmp_path / "o").exists()


# ---- the commands run end to end ------------------------------------------------------------
def test_generate_writes_extra_formats(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "gen"
    code, _, err = run(capsys, "generate", "--elements", "Na,Cl", "-n", "3", "--steps", "2",
                       "--model", tiny_model_dir, "--out", out, "--format", "cif,extxyz,poscar",
                       "--quiet")  # fmt: skip
    assert code == 0, err
    rows = list(csv.DictReader((out / "summary.csv").open()))
    for row in rows:
        if row["status"] == "ok":
            stem = Path(row["cif"]).stem
            assert (out / f"{stem}.extxyz").exists() and (out / f"{stem}.vasp").exists()
            back = Structure.from_file(out / f"{stem}.vasp")
            assert len(back) == int(row["atoms"])


def test_roundtrip_command(cif_dir, tmp_path, capsys):
    code, out, err = run(capsys, "roundtrip", cif_dir, "--out", tmp_path / "rt", "-n", "0", "-q")
    assert code == 0, err
    assert "3/3 round trips match" in out
    assert len(list((tmp_path / "rt").glob("*.cif"))) == 3


def test_references_command(tmp_path, capsys):
    fcc = {
        "mp-1": Structure(Lattice.cubic(3.61), ["Cu"] * 4,
                          [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]),
        "mp-2": Structure(Lattice.cubic(4.08), ["Au"] * 4,
                          [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]),
    }  # fmt: skip
    ref = write_split(tmp_path / "ref.csv", fcc)
    table = tmp_path / "table.csv.gz"
    args = ["references", "--mlip", EMT, "--reference", ref, "--work", tmp_path / "work",
            "--out", table, "-q"]  # fmt: skip
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert "2 new energies; 2 rows" in out
    with gzip.open(table, "rt") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["material_id"] for r in rows] == ["mp-1", "mp-2"]
    assert all(r["energy_per_atom"] for r in rows)
    code, out, _ = run(capsys, *args)  # resumes: nothing new
    assert code == 0 and "0 new energies; 2 rows" in out


@pytest.mark.slow
def test_train_and_export_commands(tmp_path, capsys):
    split = write_split(tmp_path / "split.csv", {k: f() for k, f in KNOWN.items()})
    run_dir = tmp_path / "run"
    code, _, err = run(capsys, "train", "--data", split, "--out", run_dir, "--preset", "tiny",
                       "--batch-size", "4", "--val-size", "0", "--max-steps", "2",
                       "-q")  # fmt: skip
    assert code == 0, err
    model = tmp_path / "model"
    code, _, err = run(capsys, "export", run_dir / "last.ckpt", model)
    assert code == 0, err
    assert (model / "config.json").exists() and (model / "pccd.json").exists()
    code, _, err = run(capsys, "export", run_dir / "last.ckpt", tmp_path / "half", "--dtype",
                       "float16")  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "half" / "config.json").read_text())["weights_dtype"] == "float16"
    code, _, err = run(capsys, "generate", "--elements", "Si", "-n", "2", "--steps", "2",
                       "--model", model, "--out", tmp_path / "gen", "-q")  # fmt: skip
    assert code == 0, err
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_text("not a checkpoint")
    code, _, err = run(capsys, "export", garbage, tmp_path / "m2")
    assert_user_error(code, err, "garbage.ckpt")


@pytest.mark.slow
def test_batch_command(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "batch"
    args = ["batch", "--pool", "3", "--lists", "2", "--per-list", "1", "--steps", "2",
            "--model", tiny_model_dir, "--mlip", EMT, "--max-steps", "3", "--out", out,
            "-q"]  # fmt: skip
    code, printed, err = run(capsys, *args)
    assert code == 0, err
    rows = list(csv.DictReader((out / "batch3.csv").open()))
    assert len(rows) == 2
    assert all(r["status"] for r in rows)  # every crystal has a status, failures included
    stats = json.loads((out / "batch3.json").read_text())
    assert stats["generated"] == 2
    assert stats["with_e_hull"] + stats["failed"] == 2 and "of_relaxed" in stats
    assert "2 crystals:" in printed and "of all 2:" in printed  # shares over every crystal
    assert (out / "batch3_ehull.png").exists()
    code, _, err = run(capsys, *args)  # rerun: resumes, same rows
    assert code == 0, err
    assert list(csv.DictReader((out / "batch3.csv").open())) == rows


def test_screen_refuses_a_second_input_in_the_same_output(cif_dir, tmp_path, capsys):
    out = tmp_path / "scr"
    code, _, err = run(capsys, "screen", cif_dir, "--mlip", EMT, "--max-steps", "2",
                       "--out", out, "--limit", "1", "-q")  # fmt: skip
    assert code == 0, err
    settings = json.loads((out / "run.json").read_text())
    assert settings["input"] == str(cif_dir.resolve())
    other = tmp_path / "other"
    other.mkdir()
    nacl().to(filename=str(other / "x.cif"))
    code, _, err = run(capsys, "screen", other, "--mlip", EMT, "--max-steps", "2",
                       "--out", out, "--limit", "1", "-q")  # fmt: skip
    assert_user_error(code, err, "input")


@pytest.mark.slow
def test_screen_killed_mid_run_resumes_without_losing_or_duplicating_rows(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for k, a in enumerate([3.5, 3.6, 3.7, 3.8, 3.9, 4.0, 4.1, 4.2]):
        s = Structure(Lattice.cubic(a), ["Cu", "Au"], [[0, 0, 0], [0.5, 0.5, 0.5]])
        s.to(filename=str(inputs / f"{k:02d}_CuAu.cif"))
    out = tmp_path / "scr"
    cmd = [sys.executable, "-m", "pccd.cli", "screen", str(inputs), "--out", str(out),
           "--mlip", "tests.fake_mlip:slow_emt", "--max-steps", "8", "--threads", "1",
           "-q"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    screen_csv = out / "screen.csv"

    def rows() -> list[dict[str, str]]:
        if not screen_csv.exists():
            return []
        with screen_csv.open(newline="") as fh:
            return list(csv.DictReader(fh))

    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(rows()) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()  # type: ignore[union-attr]
    before = rows()
    assert 2 <= len(before) < 8
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    after = rows()
    ids = [r["id"] for r in after]
    assert sorted(ids) == sorted(p.stem for p in inputs.glob("*.cif"))  # none lost
    assert len(ids) == len(set(ids))  # none duplicated
    assert after[: len(before)] == before  # finished rows untouched


def test_generate_valid_only_reports_the_cap(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "valid"
    code, _, err = run(capsys, "generate", "--elements", "Na,Cl", "-n", "2", "--valid-only",
                       "--max-draws", "4", "--batch-size", "2", "--steps", "2",
                       "--model", tiny_model_dir, "--out", out, "--quiet")  # fmt: skip
    # an untrained model never passes: the cap is a clear one-line answer, the draws are kept
    assert_user_error(code, err, "0 of 2 crystals passed in 4 draws")
    assert (out / "acceptance.json").exists()
    code, _, err = run(capsys, "generate", "--elements", "Na,Cl", "--max-draws", "4",
                       "--model", tiny_model_dir, "--out", tmp_path / "x")  # fmt: skip
    assert_user_error(code, err, "--max-draws only applies with --valid-only")


def test_generate_guide_on_some_conditions(tiny_model_dir, tmp_path, capsys):
    code, _, err = run(capsys, "generate", "--elements", "Na,Cl", "--guide", "band_gap",
                       "--model", tiny_model_dir, "--out", tmp_path / "a")  # fmt: skip
    assert_user_error(code, err, "give --guidance other than 1")
    code, _, err = run(capsys, "generate", "--elements", "Na,Cl", "--guide", "spacegroup",
                       "--guidance", "2", "--model", tiny_model_dir,
                       "--out", tmp_path / "b")  # fmt: skip
    assert_user_error(code, err, "unknown condition(s) ['spacegroup']")
    out = tmp_path / "c"
    code, _, _ = run(capsys, "generate", "--elements", "Na,Cl", "--band-gap", "3", "-n", "2",
                     "--guidance", "2", "--guide", "band_gap", "--steps", "2",
                     "--model", tiny_model_dir, "--out", out, "--quiet")  # fmt: skip
    assert code == 0 and json.loads((out / "run.json").read_text())["guide"] == ["band_gap"]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_generate_with_stability(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "stable"
    code, _, err = run(capsys, "generate", "--elements", "Na,Cl", "--stability", "stable",
                       "-n", "2", "--guidance", "2", "--guide", "stability", "--steps", "2",
                       "--model", tiny_model_dir, "--out", out, "--quiet")  # fmt: skip
    assert code == 0, err
    settings = json.loads((out / "run.json").read_text())
    assert settings["stability"] == "stable" and settings["guide"] == ["stability"]
    out = tmp_path / "split"
    split = write_split(tmp_path / "split.csv", {"nacl": nacl(), "si": silicon()})
    code, _, err = run(capsys, "generate", "--elements-from", split, "--stability", "unstable",
                       "-n", "2", "--steps", "2", "--model", tiny_model_dir, "--out", out,
                       "--quiet")  # fmt: skip
    assert code == 0, err
    assert "requests_sha256" in json.loads((out / "run.json").read_text())


def test_checkpoint_pack_and_unpack(tmp_path, capsys):
    from pccd.training import TrainConfig, train
    from tests.test_training import TINY, write_csv

    csv = write_csv(tmp_path / "set.csv")
    train(csv, tmp_path / "run", TrainConfig(**TINY), max_steps=2, progress=False)
    code, out, _ = run(capsys, "checkpoint", "pack", tmp_path / "run", tmp_path / "packed")
    assert code == 0 and "manifest.pt" in out and "tensors-001.pt" in out
    assert "tensors-002.pt" not in out
    code, out, _ = run(capsys, "checkpoint", "pack", tmp_path / "run", tmp_path / "packed",
                       "--max-file-mb", "0.1")  # fmt: skip
    assert code == 0 and "tensors-004.pt" in out
    code, out, _ = run(capsys, "checkpoint", "unpack", tmp_path / "packed", tmp_path / "again")
    assert code == 0 and (tmp_path / "again" / "last.ckpt").exists()
    code, _, err = run(capsys, "checkpoint", "pack", tmp_path / "run", tmp_path / "p1",
                       "--max-file-mb", "0.005")  # fmt: skip
    assert_user_error(code, err, "does not fit in a 0.005 MB file")
    code, _, err = run(capsys, "checkpoint", "pack", tmp_path / "nothing", tmp_path / "p2")
    assert_user_error(code, err, "no such checkpoint")
    code, _, err = run(capsys, "checkpoint", "unpack", tmp_path / "run", tmp_path / "p3")
    assert_user_error(code, err, "not a packed checkpoint")


def test_evaluate_refuses_nonphysical_cells_without_hanging(tmp_path, capsys):
    from tests.conftest import nacl

    cifs = tmp_path / "cifs"
    cifs.mkdir()
    nacl().to(filename=str(cifs / "ok.cif"))
    text = (cifs / "ok.cif").read_text()
    length = next(line for line in text.splitlines() if line.startswith("_cell_length_a"))
    (cifs / "huge.cif").write_text(text.replace(length, "_cell_length_a   1000000"))
    code, out, _ = run(capsys, "evaluate", cifs, "--out", tmp_path / "eval", "--no-novelty")
    assert code == 0 and "plausible 50.0%" in out  # the huge cell counts, as implausible
    rows = (tmp_path / "eval" / "structures.csv").read_text()
    assert "nonphysical_cell" in rows


def test_precision_flag_reaches_the_pipeline_and_run_json(tiny_model_dir, cif_dir, tmp_path,
                                                          capsys, monkeypatch):  # fmt: skip
    """--precision is the precision the sampling pipeline runs at (generate, csp, reconstruct;
    batch and serve share the flag) and lands in run.json and the reports; rerunning a bf16 run
    in float32 is refused like a changed sampler."""
    from pccd.cli import build_parser
    from pccd.pipeline import PCCDPipeline

    parser = build_parser()
    for argv, default in ((["generate", "--out", "o"], None), (["csp", "x", "--out", "o"], None),
                          (["reconstruct", "x", "--out", "o"], None),
                          (["batch", "--pool", "3", "--out", "o"], None),
                          (["serve"], "float32")):  # fmt: skip
        assert parser.parse_args(argv).precision == default  # None: the model's own choice
        assert parser.parse_args([*argv, "--precision", "bfloat16"]).precision == "bfloat16"
    code, _, err = run(capsys, "serve", "--precision", "fp16")
    assert_user_error(code, err, "--precision")

    used = []
    denoise = PCCDPipeline.denoise

    def spy(self, *args, **kwargs):
        used.append(self.precision)
        return denoise(self, *args, **kwargs)

    monkeypatch.setattr(PCCDPipeline, "denoise", spy)
    gen = tmp_path / "gen"
    args = ["generate", "--elements", "Na,Cl", "-n", "2", "--steps", "2",
            "--model", tiny_model_dir, "--out", gen, "-q"]  # fmt: skip
    code, _, err = run(capsys, *args, "--precision", "bfloat16")
    assert code == 0, err
    assert used == ["bfloat16"]
    assert json.loads((gen / "run.json").read_text())["precision"] == "bfloat16"
    code, _, err = run(capsys, *args, "--precision", "float32")
    assert_user_error(code, err, "precision: 'bfloat16' → 'float32'")
    code, _, err = run(capsys, *args)  # no --precision: resumes at the run's own
    assert code == 0, err

    csp = tmp_path / "csp"
    code, _, err = run(capsys, "csp", cif_dir, "-n", "1", "-k", "1", "--steps", "2",
                       "--precision", "bfloat16", "--model", tiny_model_dir, "--out", csp,
                       "-q")  # fmt: skip
    assert code == 0, err
    assert json.loads((csp / "run.json").read_text())["precision"] == "bfloat16"
    assert json.loads((csp / "metrics.json").read_text())["model"]["precision"] == "bfloat16"
    assert "| network precision | bfloat16 |" in (csp / "report.md").read_text()

    rec = tmp_path / "rec"
    code, _, err = run(capsys, "reconstruct", cif_dir, "-n", "1", "--t", "10", "--sampler",
                       "ddim", "--steps", "2", "--distances", "none", "--precision", "bfloat16",
                       "--model", tiny_model_dir, "--out", rec, "-q")  # fmt: skip
    assert code == 0, err
    assert json.loads((rec / "run.json").read_text())["precision"] == "bfloat16"
    assert json.loads((rec / "metrics.json").read_text())["model"]["precision"] == "bfloat16"
    assert used == ["bfloat16"] * 3


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    """Only the project's InputError is a one-line user error: any other exception inside a
    command (here a ValueError, which main() once printed as bad input) is a bug and reaches the
    caller with its traceback."""
    import pccd.cli.data
    from pccd.errors import InputError

    split = write_split(tmp_path / "split.csv", {"nacl": nacl()})

    def bug(*args, **kwargs):
        raise ValueError("a bug in the loader")

    monkeypatch.setattr(pccd.cli.data, "load_data", bug)
    with pytest.raises(ValueError, match="a bug in the loader") as raised:
        main(["data", "inspect", str(split)])
    assert not isinstance(raised.value, InputError)


@pytest.mark.parametrize("command", ["csp", "reconstruct"])
def test_a_split_no_crystal_survives_is_refused(command, tmp_path, capsys):
    split = write_split(tmp_path / "val.csv", {"a": nacl(), "b": wurtzite()})
    code, _, err = run(capsys, command, split, "--max-sites", "1", "--out", tmp_path / "o")
    assert_user_error(code, err, "no crystal passed the filter")
    assert not (tmp_path / "o").exists()


def test_each_command_is_registered_by_the_module_main_imports_for_it():
    """main() builds the parser from the invoked command's module only (a fast start); the
    table it uses must name every command and its true module."""
    from pccd.cli import COMMANDS, MODULES, build_parser

    full = build_parser()
    sub = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(COMMANDS)
    assert set(COMMANDS.values()) == set(MODULES)
    for command, module in COMMANDS.items():
        alone = build_parser(command)
        only = next(a for a in alone._actions if isinstance(a, argparse._SubParsersAction))
        assert command in only.choices, (command, module)


def _loaded_after(imports: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh interpreter holds after running ``imports``."""
    code = f"import sys; {imports}; print([m for m in {modules!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return ast.literal_eval(out.stdout.strip())


def test_generate_starts_without_the_other_commands_stacks():
    """`pccd generate` must not import the CSP benchmark, the structure matcher, the
    point-cloud decoder's scikit-learn or ASE's readers, optimisers and symmetry stack (only
    `--relax`, `--format extxyz` and ASE input files need them): each costs a fraction of a
    second per call."""
    imports = (
        "from pccd.cli import build_parser; build_parser('generate'); "
        "import pccd.cli.generate, pccd.runs, pccd.families.atoms.family"
    )
    heavy = ("pccd.experiments.csp", "sklearn.cluster", "pymatgen.analysis.structure_matcher",
             "matplotlib", "ase.io", "ase.optimize", "ase.spacegroup", "pymatgen.io.ase",
             "pccd.screen.batched")  # fmt: skip
    assert _loaded_after(imports, heavy) == []


def test_packing_and_exporting_a_checkpoint_load_neither_lightning_nor_scikit_learn():
    """`pccd checkpoint pack|unpack` and `pccd export` only move tensors: Lightning (4.7 s) and
    the decoder's scikit-learn (1.3 s) are for training and decoding, and halved these commands'
    time when `pccd.training` imported them all."""
    imports = (
        "from pccd.cli import build_parser; build_parser('checkpoint'); import pccd.cli.train; "
        "from pccd.training import export_pretrained, pack_checkpoint, unpack_checkpoint; "
        "from pccd.training import TrainConfig, CrystalDataset"
    )
    assert _loaded_after(imports, ("lightning", "sklearn.cluster")) == []


@pytest.mark.parametrize("package", ["pccd.evaluate", "pccd.training"])
def test_every_public_name_of_a_lazy_package_resolves(package):
    """The packages that import their submodules on first use (so that the commands above start
    without them) still give every name of ``__all__`` (a wrong home in their map fails here),
    and refuse a name they lack as a module does."""
    namespace: dict = {}
    exec(f"from {package} import *", namespace)  # star import reads every name of __all__
    lazy = sys.modules[package]
    assert set(lazy.__all__) <= set(namespace)
    assert all(namespace[name] is getattr(lazy, name) for name in lazy.__all__)
    with pytest.raises(AttributeError, match="has no attribute 'nonexistent'"):
        lazy.nonexistent  # noqa: B018
