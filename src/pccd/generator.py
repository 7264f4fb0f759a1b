"""The seam between model families and everything that uses a model.

Everything above the families — run directories (:mod:`pccd.runs`), the experiment drivers,
the web page and the CLI — talks to a model only through what this module defines:

* :class:`Request` — what to make (elements, optional formula and conditions), validated;
* :class:`Sample` — what came out: a ``Structure`` or a typed :class:`DecodeFailure`;
* :class:`Generator` — the protocol a loaded model satisfies (check a request and sampling
  options before any work, generate samples batch by batch, say what it was trained on);
* :func:`load_pretrained` — reads a model directory's ``pccd.json``, whose ``family`` names the
  implementation in :data:`FAMILIES`, and returns that family's generator;
* :func:`describe_model` / :func:`shipped_models` — what a model directory says about itself
  (family, trained conditions, parameters, headline figures) without building its network.

A family is a module under ``pccd.families`` with ``load(directory, meta, device, precision)``,
``describe(directory, meta)`` and ``export(source, out, **options)`` (training output → model
directory); adding one is adding a row to :data:`FAMILIES`, never a branch in a command.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from pymatgen.core import Composition, Structure
from pymatgen.core.periodic_table import Element

from pccd.conditioning import (
    MAGNETIC_ORDERINGS,
    MAX_ATOMS,
    MAX_SLOTS,
    STABILITY_LABELS,
    Conditions,
)
from pccd.errors import InputError, MissingInputError

WEIGHTS_DIR = Path(__file__).parent / "weights"
"""Model directories shipped inside the package (``pccd.json`` + weights + model card)."""
DEFAULT_MODEL = "pccd-atoms"
"""The model every generating command uses when none is named: the atom-level model, whose raw
samples look like crystals (benchmarks/results/atoms/; ``--model pccd-cpu`` is the paper's
point-cloud model)."""
FAMILIES = {"points": "pccd.families.points", "atoms": "pccd.families.atoms.family"}
"""Model family → its module (``load``, ``describe``, ``export``; see the module docstring)."""
LEGACY_FAMILY = "points"
"""The family of a model directory written before ``pccd.json`` named one (all of them were
point-cloud models)."""


def as_elements(elements: Sequence[str | int | Element]) -> list[Element]:
    """Normalise symbols / atomic numbers to ``Element`` objects in slot order, validated."""
    out: list[Element] = []
    for e in elements:
        try:
            el = Element.from_Z(e) if isinstance(e, int) else Element(str(e))
        except (ValueError, KeyError) as exc:
            raise InputError(f"unknown element {e!r}") from exc
        out.append(el)
    if len(set(out)) != len(out):
        raise InputError(f"repeated element in {[str(e) for e in elements]}")
    if not 1 <= len(out) <= MAX_SLOTS:
        raise InputError(f"need 1 to {MAX_SLOTS} elements, got {len(out)}")
    return sorted(out, key=lambda el: el.Z)


class DecodeReason(StrEnum):
    """Why an array did not decode into a crystal."""

    NON_FINITE = "non_finite"
    DEGENERATE_LATTICE = "degenerate_lattice"
    NO_CLUSTERS = "no_clusters"
    TOO_MANY_ATOMS = "too_many_atoms"
    ATOMS_TOO_CLOSE = "atoms_too_close"


@dataclass(frozen=True)
class DecodeFailure:
    """A typed decoding failure: the reason and a human-readable detail."""

    reason: DecodeReason
    detail: str

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}"


@dataclass(frozen=True)
class Request:
    """A validated generation request: elements in slot order and optional conditions."""

    elements: tuple[Element, ...]
    formula: tuple[int, ...] | None = None
    band_gap: float | None = None
    magnetic: str | None = None
    stability: str | None = None

    @classmethod
    def parse(
        cls,
        elements: Sequence[str | int | Element] | None = None,
        *,
        formula: str | None = None,
        band_gap: float | None = None,
        magnetic: str | None = None,
        stability: str | None = None,
    ) -> Request:
        """Validate a request; raise ``ValueError`` with a clear message if it cannot be met.

        ``formula`` (e.g. ``"Mg2MnO4"``) fixes the atom count per element (CSP mode); the cell
        holds exactly that many atoms, so it must have ≤16. ``elements`` may be omitted when a
        formula is given. ``stability`` is ``"stable"`` (energy above the hull below
        :data:`~pccd.conditioning.STABLE_E_ABOVE_HULL`) or ``"unstable"``, case-insensitive.
        """
        comp = None
        if formula is not None:
            try:
                comp = Composition(formula)
            except (ValueError, KeyError) as exc:
                raise InputError(f"cannot parse formula {formula!r}: {exc}") from exc
            if any(not float(v).is_integer() for v in comp.values()):
                raise InputError(f"formula {formula!r} must have whole atom counts")
            if comp.num_atoms > MAX_ATOMS:
                raise InputError(f"formula {formula} has {comp.num_atoms:g} atoms > {MAX_ATOMS}")
        if elements is None or len(elements) == 0:
            if comp is None:
                raise InputError("give the elements (e.g. Mg,Mn,O) or a formula")
            elements = [str(e) for e in comp.elements]
        els = tuple(as_elements(elements))
        counts = None
        if comp is not None:
            if {e.symbol for e in comp.elements} != {e.symbol for e in els}:
                raise InputError(
                    f"formula {formula} has elements {sorted(str(e) for e in comp.elements)}, "
                    f"not the requested {[e.symbol for e in els]}"
                )
            counts = tuple(int(comp[e]) for e in els)
        if band_gap is not None and not (np.isfinite(band_gap) and band_gap >= 0):
            raise InputError(f"band gap must be a non-negative number of eV, not {band_gap}")
        if magnetic is not None and magnetic not in MAGNETIC_ORDERINGS:
            raise InputError(f"magnetic ordering must be one of {MAGNETIC_ORDERINGS}")
        if stability is not None:
            if not isinstance(stability, str) or stability.strip().lower() not in STABILITY_LABELS:
                raise InputError(f"stability must be one of {STABILITY_LABELS}, not {stability!r}")
            stability = stability.strip().lower()
        return cls(els, counts, band_gap, magnetic, stability)

    def conditions(self, n: int) -> Conditions:
        """The request repeated ``n`` times as a :class:`Conditions` batch."""
        zs = [e.Z for e in self.elements]
        return Conditions.from_lists(
            [zs] * n,
            band_gap=None if self.band_gap is None else [self.band_gap] * n,
            magnetic=None if self.magnetic is None else [self.magnetic] * n,
            formula=None if self.formula is None else [list(self.formula)] * n,
            stability=None if self.stability is None else [self.stability] * n,
        )


@dataclass
class Sample:
    """One generated crystal: its index in the run, the structure or the decoding failure."""

    index: int
    structure: Structure | None
    failure: DecodeFailure | None
    array: np.ndarray | None = None
    """The family's raw output for this sample (the point-cloud array), if it has one."""


@runtime_checkable
class Generator(Protocol):
    """What a loaded model offers the layers above the families.

    Attributes:
        family: the family name (a key of :data:`FAMILIES`).
        meta: the model directory's ``pccd.json`` (name, trained conditions, training record).
        precision: how the network computes while sampling (recorded by runs).
        samplers: sampler names this model accepts; the first is its default.
    """

    family: str
    meta: dict
    precision: str
    samplers: tuple[str, ...]

    @property
    def trained_conditions(self) -> tuple[str, ...]:
        """Conditions the weights learned from labelled data; others are refused."""
        ...

    def check_request(self, request: Request) -> None:
        """Raise ``ValueError`` if the model cannot serve ``request`` (before any work)."""
        ...

    def check_options(self, **options: Any) -> None:
        """Raise ``ValueError`` for sampling options this model does not take (before any
        file is written); ``options`` are those of :meth:`iter_generate`."""
        ...

    def default_steps(self, sampler: str) -> int:
        """The steps ``sampler`` takes when ``steps`` is not given (runs report it)."""
        ...

    def with_formula_decoding(self, mode: str) -> Generator:
        """This generator with CSP's formula decoding ``mode`` (``"blocks"``: candidates keep
        the given formula; ``"cluster"``: a point-cloud decoder that ignores it); raises
        ``ValueError`` for a mode the family has no use for."""
        ...

    def iter_generate(
        self, requests: Request | Sequence[Request], n: int | None = None, **options: Any
    ) -> Iterator[list[Sample]]:
        """Yield samples batch by batch. Options every family takes: ``sampler``, ``steps``,
        ``guidance_scale``, ``seed``, ``batch_size``, ``start`` (resume: a multiple of
        ``batch_size``), ``progress``, ``guide``. Sample ``k`` depends only on (seed, k,
        batch_size), so a resumed run makes the same crystals."""
        ...

    def generate(
        self, requests: Request | Sequence[Request], n: int | None = None, **options: Any
    ) -> list[Sample]:
        """All samples of :meth:`iter_generate`, failures included."""
        ...


class GeneratorBase:
    """The conveniences every family's generator gets from its :meth:`iter_generate`."""

    def generate(
        self, requests: Request | Sequence[Request], n: int | None = None, **options: Any
    ) -> list[Sample]:
        """All samples of a run, failures included (options of ``iter_generate``)."""
        return [s for batch in self.iter_generate(requests, n, **options) for s in batch]

    def sample(
        self,
        elements: Sequence[str | int | Element] | None = None,
        n: int = 1,
        *,
        formula: str | None = None,
        band_gap: float | None = None,
        magnetic: str | None = None,
        stability: str | None = None,
        **options: Any,
    ) -> list[Structure]:
        """Generate ``n`` crystals and return those that decoded, as pymatgen Structures.

        Example: ``load_pretrained().sample(["Mg", "Mn", "O"], n=10, seed=1)``.
        """
        request = Request.parse(
            elements, formula=formula, band_gap=band_gap, magnetic=magnetic, stability=stability
        )
        return [s.structure for s in self.generate(request, n, **options) if s.structure]

    family = ""

    def with_formula_decoding(self, mode: str) -> Generator:
        """Families that place the given atoms themselves keep a formula by construction:
        ``"blocks"`` is what they do; other modes are refused."""
        if mode != "blocks":
            raise InputError(
                f"formula decoding {mode!r} is an option of point-cloud models; {self.family} "
                "models keep the given formula by construction ('blocks')"
            )
        return self  # type: ignore[return-value]

    def checked_requests(
        self,
        requests: Request | Sequence[Request],
        n: int | None,
        batch_size: int,
        start: int,
        **options: Any,
    ) -> list[Request]:
        """One request per sample, every request and option checked before any work (what
        each family's :meth:`iter_generate` does first)."""
        if isinstance(requests, Request):
            if n is None:
                raise InputError("give n with a single request")
            requests = [requests] * n
        for request in set(requests):
            self.check_request(request)  # type: ignore[attr-defined]
        self.check_options(**options)  # type: ignore[attr-defined]
        if batch_size < 1:
            raise InputError(f"batch size must be ≥ 1, got {batch_size}")
        if start % batch_size:
            raise ValueError("start must be a multiple of batch_size")  # a caller's bug
        return list(requests)

    def iter_generate(self, requests, n=None, **options) -> Iterator[list[Sample]]:
        raise NotImplementedError


def learned_conditions(meta: dict, embedded: Sequence[str]) -> tuple[str, ...]:
    """The conditions a model learned: those ``pccd.json`` (``meta``) lists as trained, or
    every condition its network embeds when it lists none, and never one the network has no
    input for."""
    return tuple(c for c in meta.get("trained_conditions", embedded) if c in embedded)


def model_directory(name_or_path: str | Path | None = None) -> Path:
    """The directory of a shipped model name or a given path (default: :data:`DEFAULT_MODEL`).

    Raises:
        FileNotFoundError: no model directory (``pccd.json``) there.
    """
    directory = Path(name_or_path) if name_or_path is not None else WEIGHTS_DIR / DEFAULT_MODEL
    if not directory.exists() and (WEIGHTS_DIR / str(name_or_path)).exists():
        directory = WEIGHTS_DIR / str(name_or_path)
    if not (directory / "pccd.json").exists() or not (directory / "config.json").exists():
        raise MissingInputError(f"no pretrained model at {directory} (pccd.json missing)")
    return directory


def read_meta(directory: Path) -> dict:
    """A model directory's ``pccd.json`` with its ``family`` filled in (the one migration of
    model directories written before families existed)."""
    meta = json.loads((directory / "pccd.json").read_text())
    meta.setdefault("family", LEGACY_FAMILY)
    if meta["family"] not in FAMILIES:
        raise InputError(
            f"model {directory}: unknown family {meta['family']!r} (known: {', '.join(FAMILIES)})"
        )
    return meta


def family_module(family: str):
    """The module implementing ``family`` (imported on first use: a family's network code is
    only loaded when a model of it is)."""
    return importlib.import_module(FAMILIES[family])


@dataclass(frozen=True)
class ModelInfo:
    """What a model directory says about itself, read without loading its weights (the web
    page builds its form from this)."""

    directory: Path
    name: str
    family: str
    trained_conditions: tuple[str, ...]
    samplers: tuple[str, ...]
    timesteps: int


def describe_model(name_or_path: str | Path | None = None) -> ModelInfo:
    """The :class:`ModelInfo` of a shipped model name or a model directory."""
    directory = model_directory(name_or_path)
    meta = read_meta(directory)
    return family_module(meta["family"]).describe(directory, meta)


@dataclass(frozen=True)
class HeadlineFigure:
    """One measured figure a model directory states about itself (``headline`` in its
    ``pccd.json``), with the result file it comes from."""

    label: str
    value: str
    source: str | None = None
    """The result file (a path in the repository, e.g. ``benchmarks/results/...``)."""


@dataclass(frozen=True)
class ModelSummary:
    """A model directory as ``pccd models`` lists it: what :func:`describe_model` reads, plus
    the parameter count (counted in its weights), its training record and its headline
    figures."""

    info: ModelInfo
    parameters: int
    training: dict
    """Steps, samples seen and training hours from ``pccd.json`` (those it records)."""
    headline: tuple[HeadlineFigure, ...]
    default: bool = False
    """Whether this is :data:`DEFAULT_MODEL`, the model commands use when none is named."""

    def to_dict(self) -> dict:
        """A JSON-ready dict (``pccd models --json``)."""
        return {
            "name": self.info.name,
            "family": self.info.family,
            "default": self.default,
            "directory": str(self.info.directory),
            "parameters": self.parameters,
            "trained_conditions": list(self.info.trained_conditions),
            "samplers": list(self.info.samplers),
            "timesteps": self.info.timesteps,
            "training": self.training,
            "headline": [asdict(h) for h in self.headline],
        }


TRAINING_RECORD = ("steps", "samples_seen", "train_hours")
"""The keys of ``pccd.json``'s ``training`` record a :class:`ModelSummary` carries."""


def count_parameters(directory: str | Path) -> int:
    """The number of values in a model directory's weights (``model.pt``, a state dict).

    Both families save exactly their network's parameters there (their buffers are not
    persistent), so this is the parameter count, whatever dtype the weights are stored in.
    """
    import torch  # slow to import; only counting needs it

    def count(obj: Any) -> int:
        if isinstance(obj, torch.Tensor):
            return obj.numel()
        if isinstance(obj, dict):
            return sum(count(v) for v in obj.values())
        return 0

    return count(torch.load(Path(directory) / "model.pt", map_location="cpu", weights_only=True))


def headline_figures(meta: dict) -> tuple[HeadlineFigure, ...]:
    """The ``headline`` mapping of a ``pccd.json`` (``meta``) as figures, in file order.

    Each entry maps a label to ``{"value": ..., "source": "benchmarks/results/..."}`` or to a
    bare value (no source); a model directory without ``headline`` states none.
    """
    raw = meta.get("headline") or {}
    if not isinstance(raw, dict):
        raise InputError(f"model {meta.get('name', '?')}: headline must be a mapping")
    figures = []
    for label, entry in raw.items():
        if isinstance(entry, dict):
            source = entry.get("source")
            figures.append(HeadlineFigure(str(label), str(entry.get("value", "")), source))
        else:
            figures.append(HeadlineFigure(str(label), str(entry)))
    return tuple(figures)


def summarize_model(name_or_path: str | Path | None = None) -> ModelSummary:
    """The :class:`ModelSummary` of a shipped model name or a model directory (reads the
    weights to count them, builds no network)."""
    info = describe_model(name_or_path)
    meta = read_meta(info.directory)
    training = {k: v for k, v in meta.get("training", {}).items() if k in TRAINING_RECORD}
    return ModelSummary(
        info=info,
        parameters=count_parameters(info.directory),
        training=training,
        headline=headline_figures(meta),
        default=info.directory == (WEIGHTS_DIR / DEFAULT_MODEL).resolve(),
    )


def shipped_models(weights_dir: str | Path = WEIGHTS_DIR) -> list[ModelSummary]:
    """Every model shipped in ``weights_dir`` (each directory with a ``pccd.json``), the
    default model first, then by name."""
    directories = sorted(p for p in Path(weights_dir).iterdir() if (p / "pccd.json").is_file())
    models = [summarize_model(d) for d in directories]
    return sorted(models, key=lambda m: (not m.default, m.info.name or m.info.directory.name))


def export_model(
    source: str | Path, out: str | Path, *, family: str | None = None, **options: Any
) -> Path:
    """Write a model directory from a family's training output (``pccd export``).

    ``family`` None: the family whose training output ``source`` is (a point-cloud
    checkpoint file, an atom training directory). ``options`` are the family exporter's own
    (``dtype`` for point clouds; ``name``, ``hardware`` for atoms).

    Raises:
        InputError: an unknown family, a source no family wrote, an option the family's
            exporter does not take, or a source that is not that family's training output.
    """
    source = Path(source)
    if family is None:
        if not source.exists():
            raise MissingInputError(f"{source}: no such checkpoint file or training directory")
        found = [f for f in FAMILIES if family_module(f).is_training_output(source)]
        if not found:
            raise InputError(
                f"{source}: no model family's training output (a point-cloud checkpoint file "
                "or an atom training directory with train.json)"
            )
        family = found[0]
    if family not in FAMILIES:
        raise InputError(f"unknown model family {family!r} (known: {', '.join(FAMILIES)})")
    exporter = family_module(family).export
    taken = inspect.signature(exporter).parameters
    foreign = sorted(k for k in options if k not in taken or k in ("source", "out"))
    if foreign:
        raise InputError(
            f"{', '.join(foreign)}: not an export option of {family} models "
            f"(they take: {', '.join(k for k in taken if k not in ('source', 'out')) or 'none'})"
        )
    return exporter(source, Path(out), **options)


def load_pretrained(
    name_or_path: str | Path | None = None,
    device: Any = None,
    *,
    precision: str | None = None,
) -> Generator:
    """One-line load of a shipped model (by name) or a model directory, whatever its family.

    ``precision`` is how the network computes while sampling; None leaves it to the family:
    point-cloud models float32, atom models bfloat16 where the device has bfloat16 arithmetic
    (float32 elsewhere). The generator's ``precision`` says what was chosen, and runs record it.

    Example: ``load_pretrained().sample(["Mg", "Mn", "O"], n=10, seed=1)``.
    """
    directory = model_directory(name_or_path)
    meta = read_meta(directory)
    return family_module(meta["family"]).load(directory, meta, device, precision)
