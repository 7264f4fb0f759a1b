"""``--valid-only -n N`` writes exactly N crystals, also when an interrupted run is resumed.

The model is the untrained tiny one with its sampling replaced by a fixed sequence of draws (some
fail to decode, some have the wrong elements, the rest are rock salt), so which draws pass is
known and the real valid-only predicate (:func:`pccd.runs._rejection`) decides.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from pccd import runs
from pccd.cli import main
from pccd.generator import DecodeFailure, DecodeReason, Request, Sample
from pccd.pipeline import PCCDPipeline
from tests.conftest import nacl

SODIUM = Structure(Lattice.cubic(4.3), ["Na", "Na"], [[0, 0, 0], [0.5, 0.5, 0.5]])
NACL = nacl()  # built once: from_spacegroup takes about a second


def draw(k: int) -> Sample:
    """Draw ``k``: every third fails to decode, every fifth lacks Cl, the others pass."""
    if k % 3 == 0:
        return Sample(k, None, DecodeFailure(DecodeReason.NO_CLUSTERS, "noise"), None)
    return Sample(k, (SODIUM if k % 5 == 2 else NACL).copy(), None, None)


def passing(k: int) -> bool:
    return k % 3 != 0 and k % 5 != 2


def fake_iter_generate(self, requests, n=None, *, batch_size=100, start=0, **kwargs):
    for lo in range(start, len(requests), batch_size):
        yield [draw(k) for k in range(lo, min(len(requests), lo + batch_size))]


@pytest.fixture
def pipe(tiny_model_dir, monkeypatch) -> PCCDPipeline:
    monkeypatch.setattr(PCCDPipeline, "iter_generate", fake_iter_generate)
    return PCCDPipeline.from_pretrained(tiny_model_dir, device="cpu")


def rows(out: Path) -> list[dict[str, str]]:
    with (out / "summary.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize(("n", "batch_size"), [(1, 8), (3, 4), (5, 2), (4, 100)])
def test_valid_only_writes_exactly_n(pipe, tmp_path, n, batch_size):
    out = tmp_path / "run"
    runs.generate_valid_to_directory(
        pipe, Request.parse(["Na", "Cl"]), n, out, batch_size=batch_size
    )
    ok = [r for r in rows(out) if r["status"] == "ok"]
    assert len(ok) == n
    assert sorted(p.name for p in out.glob("*.cif")) == sorted(r["cif"] for r in ok)
    # the draws are recorded up to the n-th passing one, none after it
    last = [k for k in range(1000) if passing(k)][n - 1]
    assert [int(r["id"]) for r in rows(out)] == list(range(last + 1))
    acc = json.loads((out / "acceptance.json").read_text())
    assert (acc["accepted"], acc["drawn"]) == (n, last + 1)


def test_valid_only_draws_in_batches_of_at_most_n(pipe, tmp_path, monkeypatch):
    """A batch is sampled and decoded whole: `-n 2` with the default batch of 100 must not make
    100 crystals to keep 2."""
    asked = []

    def recording(self, requests, n=None, *, batch_size=100, start=0, **kwargs):
        asked.append(batch_size)
        yield from fake_iter_generate(self, requests, n, batch_size=batch_size, start=start)

    monkeypatch.setattr(PCCDPipeline, "iter_generate", recording)
    out = tmp_path / "run"
    runs.generate_valid_to_directory(pipe, Request.parse(["Na", "Cl"]), 2, out, batch_size=100)
    assert asked and set(asked) == {2}
    assert sum(r["status"] == "ok" for r in rows(out)) == 2


class Interrupted(Exception):
    """Stands for Ctrl-C or a killed process in the middle of a run."""


@pytest.mark.parametrize("where", ["after_batch", "mid_batch"])
def test_an_interrupted_valid_only_run_resumes_to_exactly_n(pipe, tmp_path, monkeypatch, where):
    request, n, batch_size = Request.parse(["Na", "Cl"]), 6, 4
    whole = tmp_path / "whole"
    runs.generate_valid_to_directory(pipe, request, n, whole, batch_size=batch_size)

    out = tmp_path / "resumed"
    if where == "after_batch":

        def stop(batch):
            raise Interrupted

        with pytest.raises(Interrupted):
            runs.generate_valid_to_directory(
                pipe, request, n, out, batch_size=batch_size, on_batch=stop
            )
    else:
        write_row = runs._sample_row

        def crash_at_draw_6(sample, *args):
            if sample.index == 6:
                raise Interrupted
            return write_row(sample, *args)

        monkeypatch.setattr(runs, "_sample_row", crash_at_draw_6)
        with pytest.raises(Interrupted):
            runs.generate_valid_to_directory(pipe, request, n, out, batch_size=batch_size)
        monkeypatch.setattr(runs, "_sample_row", write_row)
    assert 0 < sum(r["status"] == "ok" for r in rows(out)) < n  # stopped part-way
    runs.generate_valid_to_directory(pipe, request, n, out, batch_size=batch_size)
    assert rows(out) == rows(whole)  # the same draws, none twice, exactly n passing
    assert sum(r["status"] == "ok" for r in rows(out)) == n
    assert sorted(p.name for p in out.glob("*.cif")) == sorted(p.name for p in whole.glob("*.cif"))
    # a finished run rerun with the same settings stays at n
    runs.generate_valid_to_directory(pipe, request, n, out, batch_size=batch_size)
    assert rows(out) == rows(whole)


def test_generate_valid_only_cli_writes_exactly_n_files(pipe, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["generate", "--elements", "Na,Cl", "-n", "5", "--valid-only", "--batch-size", "4",
            "--steps", "2", "--model", str(tiny_model_dir), "--out", str(out),
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert len(list(out.glob("*.cif"))) == 5
    drawn = [k for k in range(1000) if passing(k)][4] + 1
    assert f"5 passing crystals of {drawn} drawn" in capsys.readouterr().out
    assert main(argv) == 0  # rerun: resumes, nothing more written
    assert len(list(out.glob("*.cif"))) == 5
