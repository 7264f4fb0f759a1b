"""The record of a generation run (``run.json``): :class:`pccd.runs.SamplingSettings`, and the
one migration that lets runs made by earlier versions of pccd resume."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from pccd.errors import InputError
from pccd.generator import Request
from pccd.pipeline import PCCDPipeline
from pccd.runs import (
    RUN_SCHEMA_VERSION,
    SamplingSettings,
    generate_run,
    generate_to_directory,
    migrate_run_json,
)

#: the run.json `pccd generate --elements Na,Cl -n 4 --batch-size 2 --steps 2` wrote before
#: schema versions (float32 and no --guide: neither recorded; repulsion always)
V1_CLI = {
    "elements": ["Na", "Cl"],
    "formula": None,
    "band_gap": None,
    "magnetic": None,
    "stability": None,
    "n": 4,
    "batch_size": 2,
    "model": "tiny-test",
    "sampler": "ddim",
    "steps": 2,
    "guidance_scale": 1.0,
    "seed": 0,
    "repulsion": None,
}


def rows(directory) -> list[dict[str, str]]:
    with (directory / "summary.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_migration_fills_what_version_1_left_out():
    migrated = migrate_run_json(V1_CLI)
    assert migrated["schema_version"] == RUN_SCHEMA_VERSION
    assert migrated["precision"] == "float32" and migrated["guide"] is None
    assert migrated["valid_only"] is False and migrated["relax"] is None
    assert {k: migrated[k] for k in V1_CLI} == V1_CLI  # what was recorded stays
    # pccd batch recorded no guidance scale: it sampled at 1
    batch = {"requests_sha256": "ab", "n": 6, "batch_size": 50, "model": "m", "sampler": "ddim",
             "steps": None, "seed": 0}  # fmt: skip
    assert migrate_run_json(batch)["guidance_scale"] == 1.0
    current = SamplingSettings(n=2, precision="bfloat16").to_json()
    assert migrate_run_json(current) == current  # the current layout is left as it is
    with pytest.raises(InputError, match="schema version 99"):
        migrate_run_json({**current, "schema_version": 99})


def test_settings_round_trip_and_refuse_other_records():
    settings = SamplingSettings.for_request(
        Request.parse(["Mg", "O"], formula="Mg2O2", band_gap=1.5), 3, guide=["band_gap"], seed=4
    )
    assert settings.formula == (2, 2) and settings.guide == ("band_gap",)
    assert SamplingSettings.from_json(json.loads(json.dumps(settings.to_json()))) == settings
    assert settings.request() == Request.parse(["Mg", "O"], formula="Mg2O2", band_gap=1.5)
    assert SamplingSettings.from_json(V1_CLI) == SamplingSettings(
        n=4, batch_size=2, model="tiny-test", sampler="ddim", steps=2, elements=("Na", "Cl")
    )
    with pytest.raises(InputError, match="not the record of a generation run"):
        SamplingSettings.from_json({"n": 10, "k": 20, "source": "val"})  # a CSP run.json
    with pytest.raises(InputError, match="one element list per crystal"):
        SamplingSettings(n=2, requests_sha256="ab").request()
    assert SamplingSettings(n=3, valid_only=True).max_draws == 150  # the default cap, 50·n


def test_a_version_1_run_resumes_to_the_crystals_of_a_fresh_run(tiny_model_dir, tmp_path):
    """A run interrupted under the old layout finishes with the crystals a fresh run makes
    (same seed), and its run.json is left as it was; other settings are still refused."""
    pipe = PCCDPipeline.from_pretrained(tiny_model_dir, device="cpu")
    request = Request.parse(["Na", "Cl"])
    fresh = tmp_path / "fresh"
    generate_to_directory(pipe, request, 4, fresh, batch_size=2, sampler="ddim", steps=2,
                          seed=0, repulsion=None)  # fmt: skip
    assert json.loads((fresh / "run.json").read_text())["schema_version"] == RUN_SCHEMA_VERSION
    old = tmp_path / "old"
    old.mkdir()
    (old / "run.json").write_text(json.dumps({**V1_CLI, "model": pipe.meta.get("name", "")}))
    lines = (fresh / "summary.csv").read_text().splitlines(keepends=True)
    (old / "summary.csv").write_text("".join(lines[:3]))  # the header and the first batch
    for row in rows(old):
        if row["cif"]:
            shutil.copy(fresh / row["cif"], old / row["cif"])
    before = (old / "run.json").read_text()
    settings = SamplingSettings.from_json(json.loads(before))  # what `pccd serve` does
    generate_run(pipe, settings, old)
    assert rows(old) == rows(fresh)
    for row in rows(fresh):
        if row["cif"]:
            assert (old / row["cif"]).read_text() == (fresh / row["cif"]).read_text()
    assert (old / "run.json").read_text() == before
    with pytest.raises(InputError, match="seed: 0 → 1"):
        generate_to_directory(pipe, request, 4, old, batch_size=2, sampler="ddim", steps=2,
                              seed=1)  # fmt: skip


def test_a_run_refuses_a_model_its_settings_do_not_name(tiny_model_dir, tmp_path):
    pipe = PCCDPipeline.from_pretrained(tiny_model_dir, device="cpu")
    settings = SamplingSettings.from_json({**V1_CLI, "model": "someone-else"})
    with pytest.raises(InputError, match="'someone-else'"):
        generate_run(pipe, settings, tmp_path / "run")
    assert not (tmp_path / "run").exists()
