"""The band-gap instrument: shipped readings, persistence, version guard, evaluate wiring."""

from __future__ import annotations

import csv
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sklearn
from pymatgen.core import Lattice, Structure

from pccd.cli import main
from pccd.evaluate import band_gap as bg
from pccd.evaluate import fingerprints
from pccd.evaluate.denovo import DeNovoSettings, evaluate_directory
from tests.conftest import nacl

pytest.importorskip("matminer")

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT.parent / "shared" / "data" / "mp_pccd" / "train.csv.gz"
RESULTS = ROOT / "benchmarks" / "results" / "band_gap_instrument.json"


def fcc(element: str, a: float) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [element], [[0, 0, 0]])


def rock_salt(cation: str, anion: str, a: float) -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(a), [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


def cscl_type(cation: str, anion: str, a: float) -> Structure:
    return Structure(Lattice.cubic(a), [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="module")
def shipped() -> bg.BandGapModel:
    return bg.load_shipped()


def test_shipped_instrument_tells_metals_from_insulators(shipped):
    crystals = [fcc("Cu", 3.61), fcc("Al", 4.05), nacl(), rock_salt("Mg", "O", 4.21)]
    gap, p = shipped.predict(crystals)
    # Cu, Al: metals, and a metal's gap is exactly 0 (not the regressor's floor)
    assert p[0] < 0.3 and p[1] < 0.3
    assert gap[0] == 0.0 and gap[1] == 0.0
    # NaCl (PBE 5.0 eV) and MgO (PBE 4.4 eV): confident insulators with large gaps
    assert p[2] > 0.9 and p[3] > 0.9
    assert gap[2] > 3.0 and gap[3] > 2.5


def test_shipped_instrument_carries_its_val_error_and_is_small(shipped):
    assert shipped.features in bg.FEATURE_OPTIONS
    val = shipped.describe()["validation"]
    assert val["n"] > 2000
    # the stated error is real and better than the trivial baselines it is shipped with
    assert val["accuracy"] > val["baseline_accuracy_majority_class"]
    assert val["gap_mae_eV_all"] < val["baseline_gap_mae_eV_all_train_mean"]
    assert (bg.SHIPPED_DIR / bg.MODEL_FILE).stat().st_size < 5_000_000
    if RESULTS.exists():  # the benchmark's JSON describes the model that is shipped
        result = json.loads(RESULTS.read_text())
        assert result["shipped"] == shipped.features
        assert result["shipped_sha256_12"] == shipped.fingerprint
        assert result["options"][shipped.features]["gap_mae_eV_all"] == val["gap_mae_eV_all"]


def test_save_load_round_trip_gives_identical_predictions(shipped, tmp_path):
    crystals = [fcc("Cu", 3.61), nacl(), rock_salt("Zn", "O", 4.28)]
    before = shipped.predict(crystals)
    shipped.save(tmp_path / "copy")
    again = bg.BandGapModel.load(tmp_path / "copy")
    after = again.predict(crystals)
    assert again.features == shipped.features
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])


def test_another_sklearn_version_is_refused_with_the_retrain_command(shipped, tmp_path):
    copy = tmp_path / "band_gap"
    shutil.copytree(bg.SHIPPED_DIR, copy)
    meta_path = copy / bg.META_FILE
    meta = json.loads(meta_path.read_text())
    meta["versions"]["scikit-learn"] = "0.1.0"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(bg.InstrumentVersionError, match=r"benchmarks/band_gap_instrument\.py"):
        bg.BandGapModel.load(copy)
    meta["versions"]["scikit-learn"] = sklearn.__version__
    meta["format_version"] = 99
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(bg.InstrumentVersionError, match="format"):
        bg.BandGapModel.load(copy)
    with pytest.raises(FileNotFoundError):
        bg.BandGapModel.load(tmp_path / "nothing-here")


def test_feature_options_differ_only_by_structure():
    rs, cs = rock_salt("Na", "Cl", 5.64), cscl_type("Na", "Cl", 3.3)
    comp = [bg.featurize_one(s, "composition") for s in (rs, cs)]
    full = [bg.featurize_one(s, "composition+structure") for s in (rs, cs)]
    assert comp[0].shape == (132,) and full[0].shape == (135,)
    np.testing.assert_array_equal(comp[0], comp[1])  # one composition, one reading
    np.testing.assert_array_equal(full[0][:132], comp[0])
    assert full[0][133] == pytest.approx(rs.volume / len(rs))  # volume per atom
    assert full[0][133] > full[1][133]  # rock salt is less dense than CsCl-type here
    assert len(bg.feature_names("composition+structure")) == 135
    with pytest.raises(ValueError, match="features must be one of"):
        bg.BandGapModel(features="structure")


def test_noble_gas_keeps_its_density_features():
    # pymatgen has no atomic radius for He, so matminer's packing fraction fails on it
    x = fingerprints.density_features(fcc("He", 4.2))
    assert np.isfinite(x[:2]).all() and math.isnan(x[2])
    assert np.isfinite(bg.featurize_one(fcc("He", 4.2), "composition+structure")[:134]).all()


@pytest.mark.skipif(not TRAIN.exists(), reason="shared data not beside the checkout")
@pytest.mark.filterwarnings("ignore::UserWarning")  # CIF coordinate rounding notes
def test_tiny_fit_on_train_rows(tmp_path):
    rows = pd.read_csv(TRAIN, index_col=0, nrows=120)
    structures = [Structure.from_str(c, fmt="cif") for c in rows["cif"]]
    gaps = rows["band_gap"].to_numpy(dtype=float)  # NaN = missing, must be dropped, not 0
    model = bg.BandGapModel(features="composition+structure").fit(structures, gaps)
    assert model.metadata["n_fit"] == int(np.isfinite(gaps).sum()) < len(gaps)
    assert model.metadata["n_fit_insulators"] == int((gaps >= bg.METAL_THRESHOLD_EV).sum())
    gap, p = model.predict(structures[:20])
    assert gap.shape == p.shape == (20,)
    assert ((p >= 0) & (p <= 1)).all()
    assert np.all((gap == 0) == (p < bg.INSULATOR_PROBABILITY))
    model.save(tmp_path)
    again = bg.BandGapModel.load(tmp_path)
    np.testing.assert_array_equal(again.predict(structures[:20])[0], gap)
    # a refit from the same data is the same model (fixed random_state)
    refit = bg.BandGapModel(features="composition+structure").fit(structures, gaps)
    np.testing.assert_array_equal(refit.predict(structures[:20])[1], p)


def test_bad_inputs_are_refused():
    model = bg.BandGapModel(features="composition")
    with pytest.raises(RuntimeError, match="not fitted"):
        model.predict_features(np.zeros((1, 132)))
    x = np.random.default_rng(0).random((40, 132))
    with pytest.raises(ValueError, match="both metals and non-metals"):
        model.fit_features(x, np.zeros(40))
    with pytest.raises(ValueError, match="132 columns"):
        model.fit_features(x[:, :10], np.zeros(40))
    model.fit_features(x, np.r_[np.zeros(20), np.full(20, 2.0)])
    gap, p = model.predict_features(np.vstack([x[:1], np.full((1, 132), np.nan)]))
    assert np.isfinite(gap[0]) and np.isnan(gap[1]) and np.isnan(p[1])  # unmeasured: NaN


def test_summary_counts_unmeasured_samples_in_the_denominator():
    s = bg.summarize_band_gaps([0.0, 3.0, None, math.nan], [0.1, 0.9, None, math.nan])
    assert (s.n_samples, s.n_measured) == (4, 2)
    assert s.insulator_share_of_all_samples == pytest.approx(0.25)
    assert s.insulator_share_of_measured == pytest.approx(0.5)
    assert s.mean_predicted_band_gap_eV_of_measured == pytest.approx(1.5)
    assert math.isnan(bg.summarize_band_gaps([], []).insulator_share_of_all_samples)


def _generated(tmp_path: Path) -> Path:
    """NaCl and Cu CIFs plus a summary.csv listing one failed decode (3 samples drawn)."""
    gen = tmp_path / "gen"
    gen.mkdir()
    nacl().to(filename=str(gen / "000.cif"))
    fcc("Cu", 3.61).to(filename=str(gen / "001.cif"))
    (gen / "summary.csv").write_text("index,status\n0,ok\n1,ok\n2,failed\n")
    return gen


def test_evaluate_writes_band_gap_columns_and_metrics(tmp_path, capsys):
    gen, out = _generated(tmp_path), tmp_path / "eval"
    args = ["evaluate", str(gen), "--out", str(out), "--no-novelty", "--quiet"]
    assert main(args) == 0
    assert "band-gap instrument (of every generated sample)" in capsys.readouterr().out
    with (out / "structures.csv").open(newline="") as fh:
        rows = {r["name"]: r for r in csv.DictReader(fh)}
    assert float(rows["000.cif"]["p_insulator"]) > 0.9
    assert float(rows["000.cif"]["predicted_band_gap"]) > 3.0
    assert float(rows["001.cif"]["predicted_band_gap"]) == 0.0
    m = json.loads((out / "metrics.json").read_text())
    b = m["band_gap_instrument"]
    assert (b["n_samples"], b["n_measured"]) == (3, 2)  # the failed decode is in the denominator
    assert b["insulator_share_of_all_samples"] == pytest.approx(1 / 3)
    assert b["instrument"]["validation"]["gap_mae_eV_all"] > 0
    assert "band_gap_instrument" not in m["missing"]
    report = (out / "report.md").read_text()
    assert "instrument val MAE" in report and "never on generated crystals" in report
    assert main(args) == 0  # a rerun resumes: same instrument, same run settings


def test_evaluate_without_matminer_skips_the_instrument(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matminer", None)  # `import matminer` now fails
    logs: list[str] = []
    m = evaluate_directory(
        _generated(tmp_path), tmp_path / "eval", DeNovoSettings(novelty=False), log=logs.append
    )
    skipped = [line for line in logs if "band-gap instrument skipped" in line]
    assert len(skipped) == 1 and "matminer" in skipped[0]
    assert "matminer" in m["missing"]["band_gap_instrument"]
    assert "band_gap_instrument" not in m
    assert m["n_used"] == 2 and m["struct_valid"] == 1.0  # the rest of the evaluation ran
    with (tmp_path / "eval" / "structures.csv").open(newline="") as fh:
        assert all(r["predicted_band_gap"] == "" for r in csv.DictReader(fh))
    assert "band-gap instrument" in (tmp_path / "eval" / "report.md").read_text()
