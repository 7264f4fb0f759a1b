"""``pccd models`` lists every shipped model (each directory of the weights with a pccd.json):
family, parameters counted in its weights, trained conditions, headline figures from its
pccd.json — and every headline figure names a result file that exists."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from pccd.cli import main
from pccd.errors import InputError
from pccd.generator import (
    DEFAULT_MODEL,
    WEIGHTS_DIR,
    count_parameters,
    headline_figures,
    shipped_models,
)

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.name for p in WEIGHTS_DIR.iterdir() if (p / "pccd.json").is_file())


def test_every_shipped_model_is_listed_default_first(capsys):
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(m["directory"].rsplit("/", 1)[-1] for m in listed) == SHIPPED
    assert listed[0]["name"] == DEFAULT_MODEL and listed[0]["default"]
    assert not any(m["default"] for m in listed[1:])
    for m in listed:
        meta = json.loads((Path(m["directory"]) / "pccd.json").read_text())
        assert m["family"] == meta.get("family", "points")
        assert m["trained_conditions"] and set(m["trained_conditions"]) <= set(
            meta.get("trained_conditions", m["trained_conditions"])
        )
        state = torch.load(Path(m["directory"]) / "model.pt", weights_only=True)
        assert m["parameters"] == sum(t.numel() for t in state.values()) > 0
        assert [h["label"] for h in m["headline"]] == list(meta.get("headline", {}))


def test_headline_figures_name_result_files_that_exist():
    for model in shipped_models():
        for figure in model.headline:
            assert figure.value, f"{model.info.name}: {figure.label} has no value"
            assert figure.source, f"{model.info.name}: {figure.label} names no result file"
            assert (REPO / figure.source).is_file(), f"{model.info.name}: {figure.source}"


def test_text_listing(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    atoms = next(m for m in shipped_models() if m.info.name == "pccd-atoms")
    cpu = next(m for m in shipped_models() if m.info.name == "pccd-cpu")
    assert "pccd-atoms  (default)" in out and "pccd-cpu  (default)" not in out
    assert f"parameters  {atoms.parameters:,}" in out
    assert f"parameters  {cpu.parameters:,}" in out
    assert "conditions  elements, formula, band_gap, stability" in out
    assert "conditions  elements, band_gap, formula" in out
    assert "headline figures:" in out and "benchmarks/results/" in out


def test_a_directory_of_models_without_headline(tiny_model_dir, tmp_path, capsys):
    weights = tmp_path / "weights"
    shutil.copytree(tiny_model_dir, weights / "tiny")
    (weights / "not-a-model").mkdir()  # no pccd.json: not listed
    assert main(["models", "--weights", str(weights)]) == 0
    out = capsys.readouterr().out
    assert "tiny-test" in out and "not-a-model" not in out
    assert "none recorded" in out
    assert f"{count_parameters(weights / 'tiny'):,}" in out


def test_headline_must_be_a_mapping():
    assert headline_figures({}) == ()
    figures = headline_figures({"headline": {"a": "1%", "b": {"value": "2%", "source": "x.json"}}})
    assert [(f.label, f.value, f.source) for f in figures] == [
        ("a", "1%", None),
        ("b", "2%", "x.json"),
    ]
    with pytest.raises(InputError):
        headline_figures({"headline": ["19%"]})
