"""The documented shapes of ``pccd serve``'s JSON API: pydantic models behind ``/openapi.json``.

Request bodies are validated with these models, so the schema a client reads is the check the
server makes. Limits that depend on the server (``--max-n``, the models it offers, their
samplers and steps) are filled in per app by :func:`generate_request_model`; what only one
model can check (its own samplers, steps and trained conditions) is checked after, by hand.
Every answer to a request that cannot be met is an :class:`ErrorBody` with a 4xx status.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)
from pymatgen.core.periodic_table import Element

from pccd.conditioning import MAGNETIC_ORDERINGS, MAX_SLOTS, STABILITY_LABELS
from pccd.web.jobs import JOB_ID, SCREEN_MLIPS

#: element symbols a request may name (pymatgen's, as :meth:`pccd.generator.Request.parse`)
Symbol = Literal[tuple(e.symbol for e in Element)]  # type: ignore[valid-type]
Number = Annotated[float, Field(allow_inf_nan=False)]
#: what a field that is of the wrong type must be, said the way the form's user reads it
FIELD_HINTS = {
    "elements": 'elements must be a list of element symbols, e.g. ["Na", "Cl"]',
    "formula": "formula must be a short string, e.g. Mg2MnO4",
    "name": "name must be a string",
    "n": "n must be a whole number",
    "seed": "seed must be a whole number",
    "steps": "steps must be a whole number",
    "batch_size": "batch_size must be a whole number",
    "max_steps": "max_steps must be a whole number",
    "band_gap": "band_gap must be a number",
    "guidance": "guidance must be a number",
    "guidance_scale": "guidance_scale must be a number",
    "fmax": "fmax must be a number",
}


#: which of a union field's errors to report: the one of the member the client meant
ERROR_RANK = {
    t: i
    for i, t in enumerate(
        ("greater_than_equal", "less_than_equal", "literal_error", "too_long", "too_short")
    )
}


class Strict(BaseModel):
    """Unknown fields refused; no coercion (``"10"`` is not 10, ``true`` is not 1)."""

    model_config = ConfigDict(extra="forbid", strict=True)


# ---- requests ------------------------------------------------------------------------------
class GenerateBase(Strict):
    """``POST /api/jobs``: what to generate. Give ``elements`` (a list, or ``"Na,Cl"``) or an
    exact cell ``formula``; the conditions (``band_gap``, ``magnetic``, ``stability``) only
    where the chosen model was trained with them (``GET /api/info`` lists them per model)."""

    name: Annotated[str, Field(pattern=JOB_ID.pattern)] | None = Field(
        None, description="job id (one directory name); made up from the request when left out"
    )
    elements: (
        Annotated[list[Symbol], Field(min_length=1, max_length=MAX_SLOTS)]
        | Annotated[str, Field(max_length=40, description='"Na,Cl"')]
        | None
    ) = None
    formula: Annotated[str, Field(min_length=1, max_length=40)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    band_gap: Annotated[Number, Field(ge=0.0, le=20.0)] | None = None
    magnetic: Literal[MAGNETIC_ORDERINGS] | None = None  # type: ignore[valid-type]
    stability: Literal[STABILITY_LABELS] | None = None  # type: ignore[valid-type]
    guidance: Annotated[Number, Field(ge=0.0, le=20.0)] | None = None
    guidance_scale: Annotated[Number, Field(ge=0.0, le=20.0)] | None = Field(
        None, description="the same as guidance (the name pccd generate uses)"
    )
    batch_size: Annotated[int, Field(ge=1, le=100)] = 100

    @model_validator(mode="after")
    def _one_guidance(self) -> GenerateBase:
        if self.guidance is not None and self.guidance_scale is not None:
            raise ValueError("give guidance or guidance_scale, not both")
        return self


def generate_request_model(max_n: int, models: Sequence, default: str) -> type[GenerateBase]:
    """The ``POST /api/jobs`` body of one server: ``n`` up to ``--max-n``, ``model`` one of
    the models it offers (``ModelInfo``s; ``default`` when left out), ``sampler`` and ``steps``
    within what some offered model has."""
    names = tuple(m.name for m in models)
    samplers = tuple(dict.fromkeys(s for m in models for s in m.samplers))
    return create_model(
        "GenerateRequest",
        __base__=GenerateBase,
        __doc__=GenerateBase.__doc__,
        n=(Annotated[int, Field(ge=1, le=max_n)], 10),
        model=(
            Literal[names] | None,  # type: ignore[valid-type]
            Field(None, description=f"one of the offered models (default {default})"),
        ),
        sampler=(
            Literal[samplers] | None,  # type: ignore[valid-type]
            Field(None, description="one of the chosen model's samplers (default its first)"),
        ),
        steps=(
            Annotated[int, Field(ge=1, le=max(m.timesteps for m in models))] | None,
            Field(None, description="sampling steps, up to the chosen model's timesteps"),
        ),
    )


class ScreenRequest(Strict):
    """``POST /api/jobs/{job}/screen``: relax every decoded crystal of a finished job with an
    MLIP and place it on the convex hull (``pccd screen`` of the job's directory)."""

    mlip: Literal[SCREEN_MLIPS] = "chgnet"  # type: ignore[valid-type]
    fmax: Annotated[Number, Field(ge=0.001, le=1.0)] = 0.05
    max_steps: Annotated[int, Field(ge=1, le=2000)] = 500


def validation_message(model: type[BaseModel], exc: ValidationError) -> str:
    """One line for the first thing wrong with a request body, naming the field and the rule
    (the form shows it as it is, so it says what to send, not how pydantic failed)."""
    errors = exc.errors(include_url=False)
    unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
    if unknown:
        return f"unknown field(s) {unknown}; allowed: {sorted(model.model_fields)}"
    # a field of a union type fails once per member: the error of the member meant says most
    error = min(errors, key=lambda e: ERROR_RANK.get(e["type"], len(ERROR_RANK)))
    key = str(error["loc"][0]) if error["loc"] else ""
    value = error.get("input")
    if error["type"] == "value_error":
        return str(error["ctx"]["error"])
    if error["type"] == "literal_error" and key == "elements" and isinstance(value, str):
        return f"unknown element {value!r}"
    if error["type"] in ("too_long", "too_short"):
        limit = error["ctx"].get("max_length", error["ctx"].get("min_length"))
        most = "most" if error["type"] == "too_long" else "least"
        return f"{key} must have at {most} {limit} items, not {error['ctx']['actual_length']}"
    if error["type"] in ("greater_than_equal", "less_than_equal"):
        props = model.model_json_schema()["properties"][key]
        ranges = [p for p in props.get("anyOf", [props]) if "minimum" in p]
        lo, hi = (ranges[0]["minimum"], ranges[0]["maximum"]) if ranges else ("?", "?")
        return f"{key} must be between {_bound(lo)} and {_bound(hi)}, not {value}"
    if error["type"] == "literal_error":
        return f"{key} must be one of {error['ctx']['expected']}, not {value!r}"
    if error["type"] == "string_pattern_mismatch" and key == "name":
        return f"job name {value!r} must match {JOB_ID.pattern}"
    if key in FIELD_HINTS:
        return f"{FIELD_HINTS[key]}, not {value!r}"
    return f"{key}: {error['msg']}" if key else error["msg"]


def _bound(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# ---- answers -------------------------------------------------------------------------------
Status = Literal["queued", "running", "done", "failed"]


class ErrorBody(BaseModel):
    """Every 4xx answer: what was wrong, in one line."""

    error: str


class Progress(BaseModel):
    done: int
    total: int | None


class ScreenInfo(BaseModel):
    status: Status
    error: str | None
    progress: Progress
    settings: dict[str, Any] | None
    position: int | None = Field(description="place in the queue while queued")


class JobSummary(BaseModel):
    id: str
    status: Status
    error: str | None
    progress: Progress
    position: int | None = Field(description="place in the queue while queued")
    seconds: float | None = Field(description="time spent generating, while running or after")
    elements: list[str] | None
    formula: str | None
    model: str | None = Field(description="the model the job was made with (its run.json)")
    settings: dict[str, Any] = Field(description="the job's run.json")
    created: float = Field(description="Unix time the job was created")
    screen: ScreenInfo | None


class StructureRow(BaseModel):
    """One crystal of a job (a summary.csv row); the screen fields only once it is screened."""

    id: str
    elements: str | None
    formula: str | None
    atoms: int | None
    space_group: str | None
    density: float | None
    min_distance: float | None
    covalent_ratio: float | None
    plausible: bool | None
    status: str | None
    reason: str | None
    file: str | None
    cif: str | None = Field(description="the CIF text, unless asked with cif=false")
    screen_status: str | None = None
    screen_reason: str | None = None
    energy_per_atom: float | None = None
    e_above_hull: float | None = None
    decomposition: str | None = None
    novel: bool | None = None
    known_id: str | None = None
    unique: bool | None = None
    sun: bool | None = None
    relaxed: bool | None = None


class JobDetail(JobSummary):
    structures: list[StructureRow]


class JobList(BaseModel):
    jobs: list[JobSummary] = Field(description="newest first")


class Created(BaseModel):
    id: str
    status: Literal["queued"]


class TaskInfo(BaseModel):
    status: Status
    error: str | None
    seconds: float | None


class ScreenAccepted(BaseModel):
    id: str
    screen: TaskInfo


class ModelChoice(BaseModel):
    """A model the page offers, as it describes itself (no weights loaded)."""

    name: str
    family: str
    conditions: list[str] = Field(description="conditions it was trained with")
    samplers: list[str] = Field(description="its samplers, the default first")
    timesteps: int = Field(description="most sampling steps")


class Info(BaseModel):
    pccd: str
    model: str = Field(description="the default model")
    precision: str
    conditions: list[str] = Field(description="the default model's trained conditions")
    models: list[ModelChoice] = Field(description="every model a job may name, default first")
    runs: str
    max_n: int
    screen_mlips: list[str]
    reference: bool


class Lattice(BaseModel):
    a: float
    b: float
    c: float
    alpha: float
    beta: float
    gamma: float
    volume: float
    matrix: list[list[float]]


class Site(BaseModel):
    element: str
    xyz: list[float]
    frac: list[float]


class StructureDetail(BaseModel):
    id: str
    job: str
    relaxed: bool
    formula: str
    cell_formula: str
    atoms: int
    density: float
    lattice: Lattice
    sites: list[Site]
    cif: str
