"""The ASGI app of ``pccd serve``: the page at ``/`` and the JSON API under ``/api``.

Every path a request names (a job id, a structure id) is checked against a strict pattern and
resolved inside ``--runs`` before anything is read; request bodies are size-capped and every
field is validated (unknown fields, types, ranges) against the models of
:mod:`pccd.web.schema` before a job is created. Answers to bad requests are
``{"error": message}`` with a 4xx status; ``/openapi.json`` documents every route, body and
answer.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from pathlib import Path
from typing import Any

from ase.io import write as write_ase
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from pymatgen.core import Composition, Structure
from pymatgen.io.ase import AseAtomsAdaptor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles

from pccd import __version__
from pccd.generator import Request as CrystalRequest
from pccd.runs import SamplingSettings
from pccd.web.auth import TokenGate
from pccd.web.jobs import (
    SCREEN_DIR,
    SCREEN_MLIPS,
    STRUCTURE_ID,
    JobError,
    JobManager,
    resolve_inside,
)
from pccd.web.schema import (
    Created,
    ErrorBody,
    GenerateBase,
    Info,
    JobDetail,
    JobList,
    ScreenAccepted,
    ScreenRequest,
    StructureDetail,
    generate_request_model,
    validation_message,
)

STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY_BYTES = 16 * 1024
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
FORMATS = {
    "cif": "chemical/x-cif",
    "extxyz": "text/plain; charset=utf-8",
    "vasp": "text/plain; charset=utf-8",
}


# ---- request parsing -----------------------------------------------------------------------
async def _json_body(request: Request) -> dict:
    """The request's JSON object; 413 past MAX_BODY_BYTES, 415 unless it is sent as JSON.

    Requiring ``application/json`` also keeps other web sites from posting jobs: a browser
    sends such a cross-site request only after a CORS preflight, which this server refuses.
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise JobError(415, "send the body as JSON (Content-Type: application/json)")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        raise JobError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise JobError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise JobError(400, f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise JobError(400, "the body must be a JSON object")
    return data


def _validate(schema: type[BaseModel], data: dict):
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise JobError(400, validation_message(schema, exc)) from None


def parse_generate(
    data: dict, manager: JobManager, max_n: int, schema: type[GenerateBase] | None = None
) -> tuple[SamplingSettings, str]:
    """Validate a POST /api/jobs body → (the job's run settings, label for the job id).

    ``schema`` is the server's request model (:func:`generate_request_model`; made here when
    not given); what only the chosen model can say — its samplers, steps and trained
    conditions — is checked after it, so a job the worker would refuse is never queued.
    """
    if schema is None:
        schema = generate_request_model(max_n, list(manager.models.values()), manager.model_name)
    body = _validate(schema, data)
    info = manager.model_for(body.model)
    elements = body.elements
    if isinstance(elements, str):
        elements = [e.strip() for e in elements.split(",") if e.strip()]
    formula = body.formula if body.formula and body.formula.strip() else None
    try:
        request = CrystalRequest.parse(
            elements,
            formula=formula,
            band_gap=body.band_gap,
            magnetic=body.magnetic,
            stability=body.stability,
        )
    except ValueError as exc:
        raise JobError(400, str(exc)) from None
    asked = {
        "formula": request.formula,
        "band_gap": request.band_gap,
        "magnetic": request.magnetic,
        "stability": request.stability,
    }
    untrained = [c for c, v in asked.items() if v is not None and c not in info.trained_conditions]
    if untrained:
        raise JobError(
            400,
            f"model {info.name} was not trained on {', '.join(untrained)}; its trained "
            f"conditions: {', '.join(info.trained_conditions)}",
        )
    sampler = body.sampler or info.samplers[0]
    if sampler not in info.samplers:
        raise JobError(400, f"sampler of {info.name} must be one of {list(info.samplers)}")
    if body.steps is not None and body.steps > info.timesteps:
        raise JobError(400, f"steps of {info.name} must be between 1 and {info.timesteps}")
    guidance = body.guidance if body.guidance is not None else body.guidance_scale
    settings = SamplingSettings.for_request(
        request,
        body.n,
        batch_size=body.batch_size,
        model=info.name,
        precision=manager.precision,
        sampler=sampler,
        steps=body.steps,
        guidance_scale=1.0 if guidance is None else guidance,
        seed=body.seed,
    )
    if request.formula:
        label = cell_formula([e.symbol for e in request.elements], list(request.formula))
    else:
        label = "-".join(e.symbol for e in request.elements)
    return settings, label


def parse_screen(data: dict, reference: str | None) -> dict:
    """Validate a POST /api/jobs/<id>/screen body → the screen's run.json settings."""
    body = _validate(ScreenRequest, data)
    return {**body.model_dump(), "reference": reference}


def cell_formula(elements: list[str], counts: list[int]) -> str:
    """``["O", "Mg", "Mn"], [4, 2, 1]`` → ``"Mg2MnO4"`` (pymatgen's order, no 1s)."""
    try:
        text = Composition(dict(zip(elements, counts, strict=True))).formula
    except (ValueError, KeyError, TypeError):
        return "".join(f"{e}{c}" for e, c in zip(elements, counts, strict=False))
    return "".join(
        part[:-1] if part.endswith("1") and not part[-2].isdigit() else part
        for part in text.split()
    )


# ---- views of a job ------------------------------------------------------------------------
def _number(text: str | None, kind=float):
    if text in (None, ""):
        return None
    try:
        value = kind(float(text)) if kind is int else kind(text)
    except ValueError:
        return None
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _flag(text: str | None) -> bool | None:
    if text in (None, ""):
        return None
    return text in ("1", "True", "true")


def job_summary(manager: JobManager, job_id: str, disk: dict) -> dict[str, object]:
    """Status, progress and settings of one job (no structures)."""
    settings = disk["settings"]
    gen = manager.state(job_id, "generate")
    if gen is not None and gen.status in ("queued", "running", "failed"):
        status, error = gen.status, gen.error
    elif disk["complete"]:
        status, error = "done", ""
    else:
        status, error = "failed", f"incomplete ({disk['done']}/{disk['total']}): {disk['reason']}"
    screen = manager.screen_disk_state(manager.runs / job_id)
    screen_task = manager.state(job_id, "screen")
    screen_info: dict[str, object] | None = None
    if screen_task is not None or screen is not None:
        if screen_task is not None and screen_task.status != "done":
            screen_status, screen_error = screen_task.status, screen_task.error
        elif screen is not None and screen["complete"]:
            screen_status, screen_error = "done", ""
        else:
            screen_status, screen_error = "failed", "incomplete; screen again to continue"
        screen_info = {
            "status": screen_status,
            "error": screen_error or None,
            "progress": {
                "done": screen["done"] if screen else 0,
                "total": screen["total"] if screen else None,
            },
            "settings": screen["settings"] if screen else None,
            "position": manager.queue_position(job_id, "screen"),
        }
    elements = settings.get("elements")
    formula = None
    if elements and isinstance(settings.get("formula"), list):
        formula = cell_formula(elements, settings["formula"])
    try:
        created = (manager.runs / job_id / "run.json").stat().st_mtime
    except OSError:
        created = (manager.runs / job_id).stat().st_mtime
    return {
        "id": job_id,
        "status": status,
        "error": error or None,
        "progress": {"done": disk["done"], "total": disk["total"]},
        "position": manager.queue_position(job_id, "generate"),
        "seconds": gen.to_dict()["seconds"] if gen is not None else None,
        "elements": elements,
        "formula": formula,
        "model": settings.get("model"),
        "settings": settings,
        "created": created,
        "screen": screen_info,
    }


def structure_rows(manager: JobManager, job_id: str, disk: dict, with_cif: bool) -> list[dict]:
    directory = manager.runs / job_id
    screen = manager.screen_disk_state(directory)
    screened = {r["id"]: r for r in screen["rows"]} if screen else {}
    out = []
    for row in disk["rows"]:
        item: dict[str, object] = {
            "id": row.get("id"),
            "elements": row.get("elements") or None,
            "formula": row.get("formula") or None,
            "atoms": _number(row.get("atoms"), int),
            "space_group": row.get("space_group") or None,
            "density": _number(row.get("density")),
            "min_distance": _number(row.get("min_distance")),
            "covalent_ratio": _number(row.get("covalent_ratio")),
            "plausible": _flag(row.get("plausible")),
            "status": row.get("status") or None,
            "reason": row.get("reason") or None,
            "file": row.get("cif") or None,
        }
        cif_name = row.get("cif") or ""
        item["cif"] = None
        if with_cif and cif_name:
            try:
                item["cif"] = resolve_file(directory, cif_name).read_text()
            except (JobError, OSError):
                item["cif"] = None
        stem = Path(cif_name).stem
        s = screened.get(stem) if cif_name else None
        if s is not None:
            item.update(
                screen_status=s.get("status") or None,
                screen_reason=s.get("reason") or None,
                energy_per_atom=_number(s.get("energy_per_atom")),
                e_above_hull=_number(s.get("e_above_hull")),
                decomposition=s.get("decomposition") or None,
                novel=_flag(s.get("novel")),
                known_id=s.get("known_id") or None,
                unique=_flag(s.get("unique")),
                sun=_flag(s.get("sun")),
                relaxed=(directory / SCREEN_DIR / "relaxed" / f"{stem}.cif").exists(),
            )
        out.append(item)
    return out


def resolve_file(directory: Path, name: str) -> Path:
    path = resolve_inside(directory, name)
    if not path.is_file():
        raise JobError(404, f"no file {name!r}")
    return path


def _structure_file(manager: JobManager, job_id: str, sid: str, relaxed: bool) -> Path:
    directory = manager.job_dir(job_id)
    if not STRUCTURE_ID.match(sid):
        raise JobError(404, f"no structure {sid!r}")
    disk = manager.disk_state(directory)
    row = next((r for r in (disk or {}).get("rows", []) if r.get("id") == sid), None)
    if row is None:
        raise JobError(404, f"no structure {sid!r} in job {job_id}")
    if not row.get("cif"):
        raise JobError(404, f"structure {sid} did not decode: {row.get('reason')}")
    if relaxed:
        return resolve_file(directory / SCREEN_DIR / "relaxed", f"{Path(row['cif']).stem}.cif")
    return resolve_file(directory, row["cif"])


def _read_structure(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_file(path)


def structure_detail(structure) -> dict[str, object]:
    lat = structure.lattice
    return {
        "formula": structure.composition.reduced_formula,
        "cell_formula": structure.composition.formula,
        "atoms": len(structure),
        "density": round(float(structure.density), 4),
        "lattice": {
            "a": lat.a,
            "b": lat.b,
            "c": lat.c,
            "alpha": lat.alpha,
            "beta": lat.beta,
            "gamma": lat.gamma,
            "volume": lat.volume,
            "matrix": lat.matrix.tolist(),
        },
        "sites": [
            {
                "element": site.specie.symbol,
                "xyz": [float(v) for v in site.coords],
                "frac": [float(v) for v in site.frac_coords],
            }
            for site in structure
        ],
    }


def convert(structure, fmt: str) -> str:
    if fmt == "vasp":
        from pymatgen.io.vasp import Poscar  # 0.5 s to import; only a POSCAR download needs it

        return Poscar(structure).get_str()
    if fmt == "extxyz":
        buf = io.StringIO()
        write_ase(buf, AseAtomsAdaptor.get_atoms(structure), format="extxyz")
        return buf.getvalue()
    raise JobError(404, f"unknown format {fmt!r}")


# ---- the app ---------------------------------------------------------------------------------
#: answers every API route may give besides its own, all in the documented error shape
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "the request is malformed or asks for something out of range"),
        (401, "this server needs its token (pccd serve printed it)"),
        (403, "a cross-site request"),
        (404, "no such job, structure or route"),
        (405, "method not allowed"),
    )
}
#: the answer of a route that queues a task, when the queue is full (with when to try again)
QUEUE_FULL: dict[int | str, dict[str, Any]] = {
    429: {
        "model": ErrorBody,
        "description": "the queue is full",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
}
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    413: {"model": ErrorBody, "description": f"body larger than {MAX_BODY_BYTES} bytes"},
    415: {"model": ErrorBody, "description": "body not sent as application/json"},
}


def _json_request_body(schema: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of a route that reads its body itself (size cap and content
    type first, see :func:`_json_body`) and then validates it with ``schema``."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema.model_json_schema()}},
        }
    }


def create_app(
    runs: str | Path = "runs",
    model: str | None = None,
    *,
    max_n: int = 1000,
    threads: int = 0,
    reference: str | None = None,
    allowed_hosts: list[str] | None = None,
    warm: bool = False,
    precision: str = "float32",
    token: str | None = None,
    max_queue: int = 50,
    models_dir: str | Path | None = None,
) -> FastAPI:
    """The app; jobs start when the app's lifespan starts (uvicorn or TestClient).

    ``token``: every request must carry it (see :class:`pccd.web.auth.TokenGate`); None
    leaves the server open, which only a loopback address should be. ``models_dir``: where the
    offered models are (default: the shipped ones); ``model`` is the default among them.
    """
    manager = JobManager(
        runs,
        model,
        threads=threads,
        reference=reference,
        precision=precision,
        max_queue=max_queue,
        models_dir=models_dir,
    )
    offered = list(manager.models.values())
    generate_schema = generate_request_model(max_n, offered, manager.model_name)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        manager.start(warm=warm)
        try:
            yield
        finally:
            manager.stop()

    hosts = list(LOOPBACK_HOSTS) if allowed_hosts is None else allowed_hosts
    app = FastAPI(
        title="pccd serve",
        version=__version__,
        description=__doc__,
        docs_url=None,  # the interactive docs load their scripts from a CDN; the page loads none
        redoc_url=None,
        lifespan=lifespan,
        middleware=[
            Middleware(TrustedHostMiddleware, allowed_hosts=hosts),
            Middleware(TokenGate, token=token),
        ],
    )
    app.state.manager = manager

    @app.exception_handler(JobError)
    async def job_error(request: Request, exc: JobError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def query_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid')}"}, status_code=400)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/api/info", response_model=Info, responses=ERRORS)
    def info() -> dict[str, object]:
        """The server: its models (default first) and what a job may ask for."""
        return {
            "pccd": __version__,
            "model": manager.model_name,
            "precision": manager.precision,
            "conditions": list(manager.trained_conditions),
            "models": [
                {
                    "name": name,
                    "family": m.family,
                    "conditions": list(m.trained_conditions),
                    "samplers": list(m.samplers),
                    "timesteps": m.timesteps,
                }
                for name, m in manager.models.items()
            ],
            "runs": str(manager.runs),
            "max_n": max_n,
            "screen_mlips": list(SCREEN_MLIPS),
            "reference": bool(reference),
        }

    @app.get("/api/jobs", response_model=JobList, responses=ERRORS)
    def list_jobs() -> dict[str, object]:
        """Every job under --runs, the page's and the shell's, newest first."""
        jobs = []
        for path in manager.runs.iterdir():
            if not path.is_dir():
                continue
            try:
                directory = manager.job_dir(path.name)
            except JobError:
                continue
            disk = manager.disk_state(directory)
            if disk is not None:
                jobs.append(job_summary(manager, path.name, disk))
        jobs.sort(key=lambda j: j["created"], reverse=True)
        return {"jobs": jobs}

    @app.post(
        "/api/jobs",
        status_code=201,
        response_model=Created,
        responses={
            **BODY_ERRORS,
            409: {"model": ErrorBody, "description": "a job of that name exists"},
            **QUEUE_FULL,
        },
        openapi_extra=_json_request_body(generate_schema),
    )
    async def create_job(request: Request) -> dict[str, object]:
        """Queue a generation job; its directory and run.json exist when this answers."""
        data = await _json_body(request)
        settings, label = parse_generate(data, manager, max_n, generate_schema)
        job_id = data.get("name") or manager.new_job_id(label)
        manager.submit_generate(job_id, settings)
        return {"id": job_id, "status": "queued"}

    @app.get(
        "/api/jobs/{job}",
        response_model=JobDetail,
        response_model_exclude_unset=True,
        responses=ERRORS,
    )
    def get_job(job: str, cif: bool = True) -> dict[str, object]:
        """A job's status, progress, settings and crystals (with their CIFs unless cif=false)."""
        directory = manager.job_dir(job)
        disk = manager.disk_state(directory)
        if disk is None:
            raise JobError(404, f"no job {job!r}")
        body = job_summary(manager, job, disk)
        body["structures"] = structure_rows(manager, job, disk, cif)
        return body

    @app.get(
        "/api/jobs/{job}/structures/{name}",
        response_class=Response,
        responses={
            **ERRORS,
            200: {
                "description": "``<id>``: the structure as JSON; ``<id>.cif``, ``<id>.extxyz``, "
                "``<id>.vasp``: the file (relaxed=true: after the screen's relaxation)",
                "model": StructureDetail,
                "content": {
                    FORMATS["cif"]: {"schema": {"type": "string"}},
                    "text/plain": {"schema": {"type": "string"}},
                },
            },
            422: {"model": ErrorBody, "description": "the structure's file cannot be read"},
        },
    )
    def get_structure(job: str, name: str, relaxed: bool = False) -> Response:
        """One crystal of a job, as JSON for the viewer or as a file to download."""
        sid, dot, fmt = name.rpartition(".")
        if not dot or fmt not in FORMATS:
            sid, fmt = name, "json"
        path = _structure_file(manager, job, sid, relaxed)
        stem = f"{job}_{path.stem}{'_relaxed' if relaxed else ''}"
        headers = {"Content-Disposition": f'attachment; filename="{stem}.{fmt}"'}
        if fmt == "cif":
            return Response(path.read_bytes(), media_type=FORMATS["cif"], headers=headers)
        try:
            structure = _read_structure(path)
        except Exception as exc:  # pymatgen raises many types on malformed files
            raise JobError(422, f"cannot read {path.name}: {exc}") from None
        if fmt == "json":
            body = structure_detail(structure)
            body.update(id=sid, job=job, relaxed=relaxed, cif=path.read_text())
            return JSONResponse(StructureDetail.model_validate(body).model_dump(mode="json"))
        return Response(convert(structure, fmt), media_type=FORMATS[fmt], headers=headers)

    @app.post(
        "/api/jobs/{job}/screen",
        status_code=202,
        response_model=ScreenAccepted,
        responses={
            **BODY_ERRORS,
            409: {"model": ErrorBody, "description": "not finished, or screening already"},
            **QUEUE_FULL,
        },
        openapi_extra=_json_request_body(ScreenRequest),
    )
    async def screen_job(job: str, request: Request) -> dict[str, object]:
        """Queue the screen of a finished job (pccd screen into <job>/screen)."""
        manager.job_dir(job)
        settings = parse_screen(await _json_body(request), reference)
        state = manager.submit_screen(job, settings)
        return {"id": job, "screen": state.to_dict()}

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
