"""A band-gap *measuring instrument* for generated crystals (metal or not, and how large a gap).

Why an instrument and not a model of the project: a generator is judged by what it makes, and
"how many of the samples look like semiconductors" is a question nobody can answer with DFT for
every sample. A small, fast regressor trained on Materials Project gaps answers it
approximately, and its approximation is known: it is fitted once on the train split's MP 2018
PBE gaps, measured on the val split (disjoint formulas), and shipped with those val figures
(``benchmarks/band_gap_instrument.py``, BENCHMARKS.md). Like any instrument it is never
re-fitted on what it measures: no generated crystal ever enters its training data, otherwise
the generator's errors would be folded into the ruler.

What it reads (matminer featurizers, from :mod:`~pccd.evaluate.fingerprints`):

* ``features="composition"``: Magpie ``ElementProperty`` statistics of the composition (132
  numbers; they depend only on the fractional composition, so NaCl and Na4Cl4 agree);
* ``features="composition+structure"``: the same plus ``DensityFeatures`` — density, volume per
  atom, packing fraction — cheap numbers that tell polymorphs and absurd cells apart.

What it predicts, with two scikit-learn histogram gradient-boosting models (fixed seed):

* ``p_insulator``: the probability that the PBE gap is at least :data:`METAL_THRESHOLD_EV`
  (0.1 eV). MP lists many metals with a tiny non-zero gap (1,300 of 17,085 train gaps lie in
  (0, 0.1) eV), which is smearing-level noise rather than a property, so those count as metals;
* ``gap``: 0 where ``p_insulator`` < 0.5, else the regressor's value, fitted on the
  non-metal rows only (a single regressor over metals and non-metals would smear the 63% of
  exact zeros into every prediction).

The targets are PBE gaps, which underestimate experimental gaps (often by 30-50%); the
instrument inherits that. Pickled scikit-learn models load safely only under the scikit-learn
version that wrote them, so the versions are recorded in a JSON file beside the model and
:meth:`BandGapModel.load` refuses another scikit-learn major.minor with the retrain command.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pymatgen.core
import sklearn
from pymatgen.core import Structure

from pccd.conditioning import METAL_THRESHOLD_EV
from pccd.evaluate import fingerprints

_log = logging.getLogger(__name__)

FEATURE_OPTIONS = ("composition", "composition+structure")
"""Named feature sets: Magpie alone, or Magpie plus density / volume per atom / packing."""
INSULATOR_PROBABILITY = 0.5
"""``p_insulator`` at or above which a crystal counts as a non-metal (and gets a gap)."""
N_MAGPIE = 132
N_STRUCTURE = 3
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "weights" / "band_gap"
"""Where the shipped instrument lives (installed with the wheel as package data)."""
MODEL_FILE = "model.joblib"
META_FILE = "band_gap.json"
RETRAIN_COMMAND = "OMP_NUM_THREADS=1 python benchmarks/band_gap_instrument.py"
FORMAT_VERSION = 1
HYPERPARAMETERS: dict[str, Any] = {
    "max_iter": 300,
    "learning_rate": 0.05,
    "max_leaf_nodes": 31,
    "min_samples_leaf": 20,
    "l2_regularization": 1.0,
    "early_stopping": False,
}
"""Fixed a priori (not tuned on val): the val figures stay an honest error estimate."""


class InstrumentVersionError(RuntimeError):
    """The saved instrument was written by another scikit-learn (or format); retrain it."""


def _check_features(features: str) -> str:
    if features not in FEATURE_OPTIONS:
        raise ValueError(f"features must be one of {FEATURE_OPTIONS}, got {features!r}")
    return features


def n_features(features: str) -> int:
    """Length of the feature vector of a named option."""
    _check_features(features)
    return N_MAGPIE + (N_STRUCTURE if features == "composition+structure" else 0)


def feature_names(features: str) -> list[str]:
    """Column names of a feature option (matminer's labels; needs matminer)."""
    _check_features(features)
    fingerprints.require_matminer()
    # optional extra: eval (matminer)
    from matminer.featurizers.composition.composite import ElementProperty
    from matminer.featurizers.structure.order import DensityFeatures

    names = list(ElementProperty.from_preset("magpie").feature_labels())
    if features == "composition+structure":
        names += list(DensityFeatures().feature_labels())
    return names


def featurize_one(
    structure: Structure, features: str, magpie: np.ndarray | None = None
) -> np.ndarray:
    """Feature vector of one crystal; raises whatever matminer raises for a crystal it cannot
    read (callers record that as "not measured" with the reason). ``magpie`` passes a Magpie
    vector the caller already has (``pccd evaluate`` computes it for its fingerprints)."""
    _check_features(features)
    parts = [fingerprints.magpie_fingerprint(structure) if magpie is None else magpie]
    if features == "composition+structure":
        parts.append(fingerprints.density_features(structure))
    return np.concatenate(parts)


def featurize(structures: Sequence[Structure], features: str) -> np.ndarray:
    """Feature matrix ``(n, n_features)``; a crystal matminer cannot featurize gets a NaN row
    (and NaN predictions) instead of stopping the batch."""
    out = np.full((len(structures), n_features(features)), np.nan)
    failed = 0
    for i, s in enumerate(structures):
        try:
            out[i] = featurize_one(s, features)
        except Exception as exc:  # one odd crystal must not cost the whole batch
            failed += 1
            _log.debug("band-gap features of crystal %d failed: %s", i, exc)
    if failed:
        _log.info("band-gap features: %d of %d crystals could not be featurized", failed, len(out))
    return out


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _versions() -> dict[str, str | None]:
    try:
        matminer_version: str | None = importlib.metadata.version("matminer")
    except Exception:  # not installed: loading still works, featurizing will not
        matminer_version = None
    return {
        "scikit-learn": sklearn.__version__,
        "matminer": matminer_version,
        "pymatgen": pymatgen.core.__version__,
        "numpy": np.__version__,
    }


@dataclass
class BandGapModel:
    """Metal/non-metal classifier plus gap regressor on matminer features.

    Attributes:
        features: one of :data:`FEATURE_OPTIONS`.
        random_state: seed of both gradient-boosting models (fits are reproducible).
        classifier, regressor: the fitted scikit-learn models (``None`` before :meth:`fit`).
        metadata: free-form facts saved beside the model, e.g. the training set and the val
            figures that are the instrument's stated error.
        fingerprint: short hash of the saved model file (``None`` for an unsaved model); an
            evaluation records it so a resumed run never mixes two instruments.
    """

    features: str = "composition+structure"
    random_state: int = 0
    classifier: Any = None
    regressor: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        _check_features(self.features)

    # ---- fitting ------------------------------------------------------------------------------
    def fit(self, structures: Sequence[Structure], gaps: Sequence[float]) -> BandGapModel:
        """Fit on crystals with known PBE gaps (eV); NaN gaps are missing data and are dropped.

        Missing gaps are not zero: in the MP data most missing values are crystals MP 2018 did
        not have, metal or not, so reading them as metals would bias the classifier.
        """
        return self.fit_features(featurize(structures, self.features), gaps)

    def fit_features(self, x: np.ndarray, gaps: Sequence[float]) -> BandGapModel:
        """Fit on a precomputed feature matrix (the benchmark featurizes each split once)."""
        # 1 s to import; only fitting the instrument needs it
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        x = self._check_matrix(x)
        y = np.asarray(gaps, dtype=np.float64)
        if len(y) != len(x):
            raise ValueError(f"{len(x)} feature rows but {len(y)} gaps")
        keep = np.isfinite(y) & np.isfinite(x).any(axis=1)
        if (~keep).any():
            _log.info("band-gap fit: %d rows without a gap or features dropped", (~keep).sum())
        x, y = x[keep], y[keep]
        insulator = y >= METAL_THRESHOLD_EV
        if insulator.all() or not insulator.any():
            raise ValueError("the training gaps need both metals and non-metals")
        if (y < 0).any():
            raise ValueError("band gaps cannot be negative")
        self.classifier = HistGradientBoostingClassifier(
            random_state=self.random_state, **HYPERPARAMETERS
        ).fit(x, insulator)
        self.regressor = HistGradientBoostingRegressor(
            random_state=self.random_state, **HYPERPARAMETERS
        ).fit(x[insulator], y[insulator])
        self.fingerprint = None
        self.metadata["n_fit"] = len(y)
        self.metadata["n_fit_insulators"] = int(insulator.sum())
        return self

    # ---- prediction ---------------------------------------------------------------------------
    def predict(self, structures: Sequence[Structure]) -> tuple[np.ndarray, np.ndarray]:
        """``(gap_eV, p_insulator)`` per crystal; NaN for a crystal that cannot be featurized."""
        return self.predict_features(featurize(structures, self.features))

    def predict_features(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(gap_eV, p_insulator)`` from a feature matrix; all-NaN rows give NaN outputs.

        The gap is exactly 0 where the classifier says metal, so the mean predicted gap of a
        sample set is not inflated by the regressor's floor on metals.
        """
        if self.classifier is None or self.regressor is None:
            raise RuntimeError("the band-gap model is not fitted; call fit() or load()")
        x = self._check_matrix(x)
        gap = np.full(len(x), np.nan)
        p = np.full(len(x), np.nan)
        ok = np.isfinite(x).any(axis=1)
        if ok.any():
            p[ok] = self.classifier.predict_proba(x[ok])[:, 1]
            value = np.clip(self.regressor.predict(x[ok]), METAL_THRESHOLD_EV, None)
            gap[ok] = np.where(p[ok] >= INSULATOR_PROBABILITY, value, 0.0)
        return gap, p

    def _check_matrix(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != n_features(self.features):
            raise ValueError(
                f"features {self.features!r} need {n_features(self.features)} columns, "
                f"got an array of shape {x.shape}"
            )
        return x

    # ---- persistence --------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``model.joblib`` and ``band_gap.json`` (versions, options, metadata).

        The JSON is what a person reads and what :meth:`load` checks before unpickling.
        """
        if self.classifier is None or self.regressor is None:
            raise RuntimeError("fit the band-gap model before saving it")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model_path = directory / MODEL_FILE
        tmp = model_path.with_suffix(".tmp")
        joblib.dump({"classifier": self.classifier, "regressor": self.regressor}, tmp, compress=3)
        tmp.replace(model_path)
        self.fingerprint = _file_hash(model_path)
        names: list[str] | None = None
        with contextlib.suppress(ImportError):  # names are documentation, not needed to load
            names = feature_names(self.features)
        meta = {
            "format_version": FORMAT_VERSION,
            "features": self.features,
            "n_features": n_features(self.features),
            "metal_threshold_eV": METAL_THRESHOLD_EV,
            "insulator_probability": INSULATOR_PROBABILITY,
            "random_state": self.random_state,
            "hyperparameters": HYPERPARAMETERS,
            "versions": _versions(),
            "model_sha256_12": self.fingerprint,
            "retrain_command": RETRAIN_COMMAND,
            "metadata": self.metadata,
            "feature_names": names,
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return model_path

    @classmethod
    def load(cls, directory: str | Path) -> BandGapModel:
        """Load a saved instrument, refusing one written by another scikit-learn major.minor.

        Raises:
            FileNotFoundError: no instrument in ``directory``.
            InstrumentVersionError: the saved format or scikit-learn version does not match.
        """
        directory = Path(directory)
        meta_path, model_path = directory / META_FILE, directory / MODEL_FILE
        for path in (meta_path, model_path):
            if not path.exists():
                raise FileNotFoundError(f"no band-gap instrument: {path} is missing")
        meta = json.loads(meta_path.read_text())
        retrain = f"retrain it with `{RETRAIN_COMMAND}` in a pccd source checkout"
        if meta.get("format_version") != FORMAT_VERSION:
            raise InstrumentVersionError(
                f"{meta_path} has format {meta.get('format_version')!r}, this pccd reads "
                f"{FORMAT_VERSION}; {retrain}"
            )
        saved = str(meta.get("versions", {}).get("scikit-learn"))
        if _major_minor(saved) != _major_minor(sklearn.__version__):
            raise InstrumentVersionError(
                f"the band-gap instrument in {directory} was saved with scikit-learn {saved} "
                f"but {sklearn.__version__} is installed, and pickled scikit-learn models are "
                f"only safe under the version that wrote them; {retrain}, or install "
                f"scikit-learn=={saved}"
            )
        saved_mm = meta.get("versions", {}).get("matminer")
        installed_mm = _versions()["matminer"]
        if saved_mm and installed_mm and _major_minor(saved_mm) != _major_minor(installed_mm):
            _log.warning(
                "band-gap instrument: saved with matminer %s, %s installed; Magpie tables "
                "may differ (%s if its predictions look off)",
                saved_mm,
                installed_mm,
                retrain,
            )
        models = joblib.load(model_path)
        model = cls(
            features=meta["features"],
            random_state=int(meta.get("random_state", 0)),
            classifier=models["classifier"],
            regressor=models["regressor"],
            metadata=dict(meta.get("metadata", {})),
            fingerprint=_file_hash(model_path),
        )
        return model

    def describe(self) -> dict[str, Any]:
        """What an evaluation records about the instrument: option, threshold, val error."""
        return {
            "features": self.features,
            "metal_threshold_eV": METAL_THRESHOLD_EV,
            "insulator_probability": INSULATOR_PROBABILITY,
            "model_sha256_12": self.fingerprint,
            "trained_on": self.metadata.get("trained_on"),
            "validation": self.metadata.get("validation"),
        }


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def load_shipped(directory: str | Path = SHIPPED_DIR) -> BandGapModel:
    """The instrument shipped in ``pccd/weights/band_gap`` (needs matminer to featurize).

    matminer is checked here, not at the first crystal, so an evaluation can skip the
    instrument with one reason instead of failing crystal by crystal.
    """
    fingerprints.require_matminer()
    return BandGapModel.load(directory)


@dataclass(frozen=True)
class BandGapSummary:
    """Instrument readings over a sample set.

    Attributes:
        n_samples: samples, measured or not (decode failures and unreadable CIFs included).
        n_measured: samples the instrument could read.
        mean_predicted_band_gap_eV_of_measured: mean predicted gap, metals as 0 (NaN if none).
        insulator_share_of_all_samples: predicted non-metals over ``n_samples``; a sample
            that was not measured counts as not an insulator, as a failed decode would.
        insulator_share_of_measured: predicted non-metals over ``n_measured``.
        mean_p_insulator_of_measured: mean classifier probability (a softer share).
    """

    n_samples: int
    n_measured: int
    mean_predicted_band_gap_eV_of_measured: float
    insulator_share_of_all_samples: float
    insulator_share_of_measured: float
    mean_p_insulator_of_measured: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def summarize_band_gaps(
    gaps: Sequence[float | None], p_insulator: Sequence[float | None]
) -> BandGapSummary:
    """Summarise per-sample readings (``None`` or NaN = the sample was not measured)."""
    if len(gaps) != len(p_insulator):
        raise ValueError(f"{len(gaps)} gaps but {len(p_insulator)} probabilities")
    n = len(gaps)
    pairs = [
        (float(g), float(p))
        for g, p in zip(gaps, p_insulator, strict=True)
        if g is not None and p is not None and math.isfinite(g) and math.isfinite(p)
    ]
    measured = len(pairs)
    insulators = sum(1 for _, p in pairs if p >= INSULATOR_PROBABILITY)
    return BandGapSummary(
        n_samples=n,
        n_measured=measured,
        mean_predicted_band_gap_eV_of_measured=float(np.mean([g for g, _ in pairs]))
        if pairs
        else math.nan,
        insulator_share_of_all_samples=insulators / n if n else math.nan,
        insulator_share_of_measured=insulators / measured if measured else math.nan,
        mean_p_insulator_of_measured=float(np.mean([p for _, p in pairs])) if pairs else math.nan,
    )
