"""Screening at scale: the batched relaxation engine, Dask, and ``generate --relax``.

Fast stand-ins (ASE's EMT, a slowed EMT) replace the MLIPs; CHGNet appears in one slow smoke
test only.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from pccd.cli import main
from pccd.mlip import MLIP
from pccd.screen.batched import relax_many
from pccd.screen.decode_relax import DecodeRelaxer
from pccd.screen.relax import RelaxationError, relax
from pccd.screen.screening import ScreenSettings, screen_directory
from tests.conftest import nacl

EMT = "ase.calculators.emt:EMT"
SLOW_EMT = "tests.fake_mlip:slow_emt"


def fcc(element: str, a: float) -> Structure:
    return Structure(Lattice.from_parameters(a / 2**0.5, a / 2**0.5, a / 2**0.5, 60, 60, 60),
                     [element], [[0, 0, 0]])  # fmt: skip


def cuau(a: float = 3.7) -> Structure:
    return Structure(Lattice.tetragonal(2.8, a), ["Cu", "Au"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def crystals() -> dict[str, Structure]:
    """Two that relax, one implausible input volume, one EMT cannot evaluate (Na, Cl)."""
    return {
        "cu": fcc("Cu", 3.9),
        "cuau": cuau(),
        "sparse": Structure(Lattice.cubic(12.0), ["Cu"], [[0, 0, 0]]),
        "nacl": nacl(),
    }


def ase_outcome(structure: Structure, mlip: MLIP, **kw):
    try:
        return relax(structure, mlip, **kw)
    except RelaxationError as exc:
        return exc


# ---- the batched engine ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "batch_size",
    [1, pytest.param(2, marks=pytest.mark.slow), pytest.param(16, marks=pytest.mark.slow)],
)
def test_batched_engine_reproduces_the_ase_engine(batch_size):
    mlip = MLIP(EMT)
    items = crystals()
    batched = dict(relax_many(items.items(), mlip, fmax=0.02, batch_size=batch_size))
    assert set(batched) == set(items)
    for key, structure in items.items():
        want, got = ase_outcome(structure, mlip, fmax=0.02), batched[key]
        if isinstance(want, Exception):  # same failure, same reason
            assert isinstance(got, RelaxationError), key
            assert str(got) == str(want)
            continue
        assert got.steps == want.steps and got.converged == want.converged, key
        assert got.energy_per_atom == pytest.approx(want.energy_per_atom, abs=1e-9)
        assert got.initial_energy_per_atom == pytest.approx(want.initial_energy_per_atom)
        assert np.allclose(got.structure.lattice.matrix, want.structure.lattice.matrix)
        assert got.seconds > 0
    assert "input volume 1728.0" in str(batched["sparse"])
    assert "failed" in str(batched["nacl"]) and batched["nacl"].seconds is not None


def test_batched_engine_classifies_a_collapse_like_the_ase_engine():
    pair = Structure(Lattice.cubic(6.0), ["Cu", "Cu"], [[0.5, 0.5, 0.5], [0.5, 0.5, 0.75]])
    mlip = MLIP("tests.test_screen:Attract")
    want = ase_outcome(pair, mlip, relax_cell=False)
    (_, got), = relax_many([("p", pair)], mlip, relax_cell=False)  # fmt: skip
    assert isinstance(want, RelaxationError) and "collapsed" in str(want)
    assert str(got) == str(want)


def test_batched_engine_refills_and_caps_steps():
    mlip = MLIP(EMT)
    items = [(k, fcc("Cu", 3.4 + 0.1 * k)) for k in range(5)]
    out = list(relax_many(items, mlip, fmax=1e-6, max_steps=3, batch_size=2))
    assert sorted(k for k, _ in out) == list(range(5))
    assert all(r.steps == 3 and not r.converged for _, r in out)  # the cap, as in relax()


# ---- the directory screen with the batched engine -------------------------------------------
def write_inputs(directory, structures: dict[str, Structure]) -> None:
    directory.mkdir()
    for name, s in structures.items():
        s.to(filename=str(directory / f"{name}.cif"))


def rows_of(path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as fh:
        return {r["id"]: r for r in csv.DictReader(fh)}


@pytest.mark.slow
def test_screen_batched_engine_gives_the_rows_of_the_ase_engine(tmp_path):
    inputs = tmp_path / "in"
    write_inputs(inputs, crystals())
    base = ScreenSettings(mlip=EMT, fmax=0.02, relax_engine="ase")
    ase = rows_of(screen_directory(inputs, tmp_path / "ase", base))
    batched_settings = ScreenSettings(mlip=EMT, fmax=0.02, relax_engine="batched")
    batched = rows_of(screen_directory(inputs, tmp_path / "b", batched_settings,
                                       relax_batch_size=3))  # fmt: skip
    assert ase.keys() == batched.keys()
    for key in ase:
        for col in ("status", "reason", "steps", "converged", "energy_per_atom", "e_above_hull"):
            assert ase[key][col] == batched[key][col], (key, col)
    assert batched["nacl"]["status"] == "relax_failed" and batched["nacl"]["seconds"]
    # "ase" is not recorded, as before the option existed (older runs resume with it)
    assert "relax_engine" not in json.loads((tmp_path / "ase" / "run.json").read_text())
    assert json.loads((tmp_path / "b" / "run.json").read_text())["relax_engine"] == "batched"
    with pytest.raises(ValueError, match="other settings"):
        screen_directory(inputs, tmp_path / "b", base)
    with pytest.raises(ValueError, match="unknown relaxation engine"):
        screen_directory(inputs, tmp_path / "c", ScreenSettings(mlip=EMT, relax_engine="x"))


@pytest.mark.slow
def test_screen_batched_engine_with_two_worker_processes(tmp_path):
    inputs = tmp_path / "in"
    write_inputs(inputs, crystals())
    settings = ScreenSettings(mlip=EMT, fmax=0.02, relax_engine="batched")
    one = rows_of(screen_directory(inputs, tmp_path / "one", settings))
    two = rows_of(screen_directory(inputs, tmp_path / "two", settings, workers=2))
    assert {k: r["energy_per_atom"] for k, r in one.items()} == {
        k: r["energy_per_atom"] for k, r in two.items()
    }


# ---- command-line checks -----------------------------------------------------------------
def test_dask_and_relax_options_are_checked_before_any_work(tmp_path, capsys):
    inputs = tmp_path / "in"
    write_inputs(inputs, {"cu": fcc("Cu", 3.7)})
    out = tmp_path / "scr"
    code = main(["screen", str(inputs), "--out", str(out), "--mlip", EMT, "--workers", "2",
                 "--dask", "tcp://127.0.0.1:1"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --workers does not apply with --dask")
    assert not out.exists()
    code = main(["generate", "--elements", "Cu", "--out", str(tmp_path / "g"),
                 "--relax-engine", "batched"])  # fmt: skip
    assert code == 2 and "only apply with --relax" in capsys.readouterr().err
    code = main(["generate", "--elements", "Cu", "--out", str(tmp_path / "g"),
                 "--relax", "mace"])  # fmt: skip
    assert code == 2 and "unknown MLIP" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


# ---- generate --relax ----------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["ase", "batched"])
def test_decode_relaxer_fills_raw_and_relaxed_columns(tmp_path, engine):
    rows: list[dict[str, object]] = []
    for sid, s in crystals().items():
        name = f"{sid}.cif"
        s.to(filename=str(tmp_path / name))
        rows.append({"id": sid, "cif": name, "status": "ok"})
    rows.append({"id": "undecoded", "cif": "", "status": "failed"})
    DecodeRelaxer(EMT, engine=engine, fmax=0.02).relax_rows(rows, tmp_path)
    by = {r["id"]: r for r in rows}
    for sid in ("cu", "cuau"):
        r = by[sid]
        assert r["relax_status"] == "ok"
        assert float(r["relaxed_energy_per_atom"]) < float(r["energy_per_atom"])
        assert (tmp_path / str(r["relaxed_cif"])).exists()
        assert (tmp_path / str(r["cif"])).exists()  # the raw CIF stays
    assert by["sparse"]["relax_status"] == "relax_failed"
    assert "input volume" in str(by["sparse"]["relax_reason"])
    assert by["sparse"]["energy_per_atom"]  # the raw energy, even though it was not relaxed
    assert by["nacl"]["relax_status"] == "relax_failed" and by["nacl"]["relax_reason"]
    assert by["undecoded"]["relax_status"] == "not_decoded"


class FixedPipeline:
    """Stands in for the model: "generates" fixed crystals (None = a decoding failure)."""

    def __init__(self, structures):
        self.structures = structures
        self.meta = {"name": "fixed"}
        self.precision = "float32"

    def check_request(self, request):
        pass

    def make_scheduler(self, sampler, steps):
        pass

    def check_options(self, **kwargs):
        pass

    def iter_generate(self, requests, *, batch_size=100, start=0, **kwargs):
        from pccd.generator import Sample

        for lo in range(start, len(requests), batch_size):
            yield [
                Sample(k, self.structures[k], None if self.structures[k] else "no atoms", None)
                for k in range(lo, min(len(requests), lo + batch_size))
            ]


def test_generate_to_directory_relaxes_each_batch_after_decoding(tmp_path):
    from pccd.generator import Request
    from pccd.runs import generate_to_directory

    made = [fcc("Cu", 3.9), None, Structure(Lattice.cubic(12.0), ["Cu"], [[0, 0, 0]]),
            cuau()]  # fmt: skip
    relaxer = DecodeRelaxer(EMT, engine="batched", fmax=0.02)
    path = generate_to_directory(FixedPipeline(made), Request.parse(["Cu", "Au"]), 4,
                                 tmp_path, batch_size=2, relax=relaxer)  # fmt: skip
    rows = list(csv.DictReader(path.open()))
    assert [r["relax_status"] for r in rows] == ["ok", "not_decoded", "relax_failed", "ok"]
    assert "input volume" in rows[2]["relax_reason"] and rows[2]["energy_per_atom"]
    for r in (rows[0], rows[3]):
        assert (tmp_path / r["cif"]).exists() and (tmp_path / r["relaxed_cif"]).exists()
        assert float(r["relaxed_energy_per_atom"]) < float(r["energy_per_atom"])
    plain = generate_to_directory(FixedPipeline(made), Request.parse(["Cu", "Au"]), 4,
                                  tmp_path / "plain", batch_size=2)  # fmt: skip
    assert "relax_status" not in next(csv.DictReader(plain.open()))  # columns as before


def test_generate_relax_command_resumes_and_keeps_settings(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "gen"
    args = ["generate", "--elements", "Cu,Au", "-n", "3", "--steps", "2", "--model",
            tiny_model_dir, "--out", out, "--relax", EMT, "--relax-engine", "batched",
            "--quiet"]  # fmt: skip
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"relaxed with {EMT}" in captured.out
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 3
    for r in rows:
        if r["status"] != "ok":
            assert r["relax_status"] == "not_decoded"
        elif r["relax_status"] == "ok":
            assert r["energy_per_atom"] and r["relaxed_energy_per_atom"]
            assert (out / r["relaxed_cif"]).exists()
        else:
            assert r["relax_status"] == "relax_failed" and r["relax_reason"]
    assert json.loads((out / "run.json").read_text())["relax"]["engine"] == "batched"
    assert main([str(a) for a in args]) == 0  # resumes: nothing new, same rows
    capsys.readouterr()
    assert list(csv.DictReader((out / "summary.csv").open())) == rows
    code = main([str(a) for a in args[:-5]] + ["--quiet"])  # without --relax: other settings
    assert code == 2 and "other settings" in capsys.readouterr().err


# ---- Dask ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_dask_screen_survives_a_killed_worker_and_matches_the_local_rows(tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    inputs = tmp_path / "in"
    structures = {f"{k:02d}": cuau(3.5 + 0.1 * k) for k in range(6)}
    structures["sparse"] = Structure(Lattice.cubic(12.0), ["Cu"], [[0, 0, 0]])
    write_inputs(inputs, structures)
    settings = ScreenSettings(mlip=SLOW_EMT, max_steps=8)
    local = rows_of(screen_directory(inputs, tmp_path / "local", settings))

    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                 dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):  # fmt: skip
        out = tmp_path / "dask"
        failure: list[BaseException] = []

        def screen() -> None:
            try:
                screen_directory(inputs, out, settings, dask=cluster.scheduler_address)
            except BaseException as exc:  # pragma: no cover - reported below
                failure.append(exc)

        thread = threading.Thread(target=screen)
        thread.start()
        pids = client.run(os.getpid)
        deadline = time.monotonic() + 120
        busy: list[str] = []
        while not busy and time.monotonic() < deadline:  # a worker holding a relaxation
            busy = [w for w, keys in client.processing().items()
                    if any(str(k).startswith("pccd-relax") for k in keys)]  # fmt: skip
            time.sleep(0.05)
        assert busy, "no relaxation task reached a worker"
        os.kill(pids[busy[0]], signal.SIGKILL)
        thread.join(timeout=300)
        assert not thread.is_alive() and not failure, failure
        assert pids[busy[0]] not in client.run(os.getpid).values()  # it did die mid-run
        rows = list(csv.DictReader((out / "screen.csv").open()))
        ids = [r["id"] for r in rows]
        assert sorted(ids) == sorted(structures)  # none lost
        assert len(ids) == len(set(ids))  # none duplicated
        for r in rows:  # the result equals the local run's
            for col in ("status", "reason", "steps", "energy_per_atom"):
                assert r[col] == local[r["id"]][col], (r["id"], col)

        # the command: a rerun resumes (nothing left to do), same rows
        code = main(["screen", str(inputs), "--out", str(out), "--mlip", SLOW_EMT,
                     "--max-steps", "8", "--dask", cluster.scheduler_address, "-q"])  # fmt: skip
        assert code == 0, capsys.readouterr().err
        assert list(csv.DictReader((out / "screen.csv").open())) == rows


@pytest.mark.slow
def test_dask_task_that_keeps_killing_workers_is_reported_not_lost_silently(tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    import dask

    from pccd.screen.screening import ScreenIncomplete

    inputs = tmp_path / "in"
    write_inputs(inputs, {"cu": fcc("Cu", 3.7), "ag": fcc("Ag", 4.2), "au": fcc("Au", 4.2)})
    settings = ScreenSettings(mlip="tests.fake_mlip:crash_on_silver", max_steps=5)
    out = tmp_path / "dask"
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                 dashboard_address=None) as cluster,
    ):  # fmt: skip
        # a task that was on the dying worker beside ag's may be lost with it (dask counts
        # it as suspicious too): the rule is that nothing is lost silently
        with pytest.raises(ScreenIncomplete, match=r"crystal\(s\) got no row .*\bag\b"):
            screen_directory(inputs, out, settings, dask=cluster.scheduler_address)
        first = rows_of(out / "screen.csv")
        assert "ag" not in first and set(first) <= {"au", "cu"}
        code = main(["screen", str(inputs), "--out", str(out), "--mlip", settings.mlip,
                     "--max-steps", "5", "--dask", cluster.scheduler_address, "-q"])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and "got no row" in err, err
        again = list(csv.DictReader((out / "screen.csv").open()))
        assert len(again) == len({r["id"] for r in again})  # never a duplicated row
        assert {k: v for k, v in rows_of(out / "screen.csv").items() if k in first} == first


# ---- a real MLIP -----------------------------------------------------------------------------
@pytest.mark.slow
def test_chgnet_batched_relaxation_agrees_with_ase_fire():
    pytest.importorskip("chgnet")
    import torch

    torch.set_num_threads(1)
    mlip = MLIP("chgnet")
    strained = Structure(Lattice.cubic(5.9), ["Na"] * 4 + ["Cl"] * 4,
                         [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
                          [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0.52]])  # fmt: skip
    items = {"nacl": strained, "si": Structure(Lattice.cubic(5.6), ["Si"] * 2,
                                               [[0, 0, 0], [0.25, 0.25, 0.25]])}  # fmt: skip
    got = dict(relax_many(items.items(), mlip, max_steps=40))
    for key, s in items.items():
        want = relax(s, mlip, max_steps=40)
        assert got[key].energy_per_atom == pytest.approx(want.energy_per_atom, abs=2e-3)
        assert abs(got[key].steps - want.steps) <= 5
