"""The ASGI app of ``pccd serve``: the page at ``/`` and the JSON API under ``/api``.

Every path a request names (a job id, a structure id) is checked against a strict pattern and
resolved inside ``--runs`` before anything is read; request bodies are size-capped and every
field is validated (unknown fields, types, ranges) before a job is created. Answers to bad
requests are ``{"error": message}`` with a 4xx status.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pccd.web.jobs import (
    SCREEN_DIR,
    SCREEN_MLIPS,
    STRUCTURE_ID,
    JobError,
    JobManager,
    generation_settings,
)

STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY_BYTES = 16 * 1024
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
FORMATS = {
    "cif": "chemical/x-cif",
    "extxyz": "text/plain; charset=utf-8",
    "vasp": "text/plain; charset=utf-8",
}
GENERATE_FIELDS = {
    "name",
    "elements",
    "formula",
    "n",
    "seed",
    "band_gap",
    "magnetic",
    "stability",
    "guidance",
    "guidance_scale",
    "sampler",
    "steps",
    "batch_size",
}
SCREEN_FIELDS = {"mlip", "fmax", "max_steps"}


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


def _int(data: dict, key: str, default: int | None, lo: int, hi: int) -> int | None:
    value = data.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise JobError(400, f"{key} must be a whole number, not {value!r}")
    if not lo <= value <= hi:
        raise JobError(400, f"{key} must be between {lo} and {hi}, not {value}")
    return value


def _float(data: dict, key: str, default: float | None, lo: float, hi: float) -> float | None:
    value = data.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise JobError(400, f"{key} must be a number, not {value!r}")
    if not lo <= value <= hi:
        raise JobError(400, f"{key} must be between {lo:g} and {hi:g}, not {value}")
    return float(value)


def _unknown(data: dict, allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise JobError(400, f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")


def parse_generate(data: dict, manager: JobManager, max_n: int) -> tuple[dict, str]:
    """Validate a POST /api/jobs body → (run.json settings, label for the job id)."""
    from pccd.generator import Request

    _unknown(data, GENERATE_FIELDS)
    elements = data.get("elements")
    if isinstance(elements, str):
        elements = [e.strip() for e in elements.split(",") if e.strip()]
    if elements is not None and (
        not isinstance(elements, list)
        or len(elements) > 8
        or not all(isinstance(e, str) and 0 < len(e) <= 3 for e in elements)
    ):
        raise JobError(400, 'elements must be a list of element symbols, e.g. ["Na", "Cl"]')
    formula = data.get("formula")
    if formula is not None and (not isinstance(formula, str) or not 0 < len(formula) <= 40):
        raise JobError(400, "formula must be a short string, e.g. Mg2MnO4")
    if formula is not None and not formula.strip():
        formula = None
    magnetic = data.get("magnetic")
    if magnetic is not None and not isinstance(magnetic, str):
        raise JobError(400, "magnetic must be one of NM, FM, AFM, FiM")
    stability = data.get("stability")
    if stability is not None and not isinstance(stability, str):
        raise JobError(400, "stability must be stable or unstable")
    band_gap = _float(data, "band_gap", None, 0.0, 20.0)
    try:
        request = Request.parse(
            elements, formula=formula, band_gap=band_gap, magnetic=magnetic, stability=stability
        )
    except ValueError as exc:
        raise JobError(400, str(exc)) from None
    n = _int(data, "n", 10, 1, max_n)
    samplers = manager.model_info.samplers
    sampler = data.get("sampler", samplers[0])
    if sampler not in samplers:
        raise JobError(400, f"sampler must be one of {list(samplers)}, not {sampler!r}")
    max_steps = manager.model_info.timesteps
    steps = _int(data, "steps", None, 1, max_steps)
    if "guidance" in data and "guidance_scale" in data:
        raise JobError(400, "give guidance or guidance_scale, not both")
    guidance = _float(data, "guidance" if "guidance" in data else "guidance_scale", 1.0, 0.0, 20.0)
    settings = generation_settings(
        request,
        n=n,
        batch_size=_int(data, "batch_size", 100, 1, 100),
        model=manager.model_name,
        sampler=sampler,
        steps=steps,
        guidance_scale=guidance,
        seed=_int(data, "seed", 0, 0, 2**31 - 1),
        precision=manager.precision,
    )
    if request.formula:
        label = cell_formula([e.symbol for e in request.elements], list(request.formula))
    else:
        label = "-".join(e.symbol for e in request.elements)
    return settings, label


def parse_screen(data: dict, reference: str | None) -> dict:
    _unknown(data, SCREEN_FIELDS)
    mlip = data.get("mlip", "chgnet")
    if mlip not in SCREEN_MLIPS:
        raise JobError(400, f"mlip must be one of {list(SCREEN_MLIPS)}, not {mlip!r}")
    return {
        "mlip": mlip,
        "fmax": _float(data, "fmax", 0.05, 0.001, 1.0),
        "max_steps": _int(data, "max_steps", 500, 1, 2000),
        "reference": reference,
    }


def cell_formula(elements: list[str], counts: list[int]) -> str:
    """``["O", "Mg", "Mn"], [4, 2, 1]`` → ``"Mg2MnO4"`` (pymatgen's order, no 1s)."""
    from pymatgen.core import Composition

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
    from pccd.web.jobs import resolve_inside

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
    from pymatgen.core import Structure

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
        from pymatgen.io.vasp import Poscar

        return Poscar(structure).get_str()
    if fmt == "extxyz":
        from ase.io import write
        from pymatgen.io.ase import AseAtomsAdaptor

        buf = io.StringIO()
        write(buf, AseAtomsAdaptor.get_atoms(structure), format="extxyz")
        return buf.getvalue()
    raise JobError(404, f"unknown format {fmt!r}")


# ---- the app ---------------------------------------------------------------------------------
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
) -> Starlette:
    """The Starlette app; jobs start when the app's lifespan starts (uvicorn or TestClient)."""
    manager = JobManager(runs, model, threads=threads, reference=reference, precision=precision)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    def info(request: Request) -> JSONResponse:
        from pccd import __version__

        return JSONResponse(
            {
                "pccd": __version__,
                "model": manager.model_name,
                "precision": manager.precision,
                "conditions": list(manager.trained_conditions),
                "runs": str(manager.runs),
                "max_n": max_n,
                "screen_mlips": list(SCREEN_MLIPS),
                "reference": bool(reference),
            }
        )

    def list_jobs(request: Request) -> JSONResponse:
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
        return JSONResponse({"jobs": jobs})

    async def create_job(request: Request) -> JSONResponse:
        data = await _json_body(request)
        settings, label = parse_generate(data, manager, max_n)
        name = data.get("name")
        if name is not None and not isinstance(name, str):
            raise JobError(400, "name must be a string")
        job_id = name or manager.new_job_id(label)
        manager.submit_generate(job_id, settings)
        return JSONResponse({"id": job_id, "status": "queued"}, status_code=201)

    def get_job(request: Request) -> JSONResponse:
        job_id = request.path_params["job"]
        directory = manager.job_dir(job_id)
        disk = manager.disk_state(directory)
        if disk is None:
            raise JobError(404, f"no job {job_id!r}")
        with_cif = request.query_params.get("cif", "1") not in ("0", "false", "no")
        body = job_summary(manager, job_id, disk)
        body["structures"] = structure_rows(manager, job_id, disk, with_cif)
        return JSONResponse(body)

    def get_structure(request: Request) -> Response:
        job_id, name = request.path_params["job"], request.path_params["name"]
        relaxed = request.query_params.get("relaxed", "0") in ("1", "true", "yes")
        sid, dot, fmt = name.rpartition(".")
        if not dot or fmt not in FORMATS:
            sid, fmt = name, "json"
        path = _structure_file(manager, job_id, sid, relaxed)
        stem = f"{job_id}_{path.stem}{'_relaxed' if relaxed else ''}"
        headers = {"Content-Disposition": f'attachment; filename="{stem}.{fmt}"'}
        if fmt == "cif":
            return Response(path.read_bytes(), media_type=FORMATS["cif"], headers=headers)
        try:
            structure = _read_structure(path)
        except Exception as exc:  # pymatgen raises many types on malformed files
            raise JobError(422, f"cannot read {path.name}: {exc}") from None
        if fmt == "json":
            body = structure_detail(structure)
            body.update(id=sid, job=job_id, relaxed=relaxed, cif=path.read_text())
            return JSONResponse(body)
        return Response(convert(structure, fmt), media_type=FORMATS[fmt], headers=headers)

    async def screen_job(request: Request) -> JSONResponse:
        job_id = request.path_params["job"]
        manager.job_dir(job_id)
        settings = parse_screen(await _json_body(request), reference)
        state = manager.submit_screen(job_id, settings)
        return JSONResponse({"id": job_id, "screen": state.to_dict()}, status_code=202)

    async def job_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, JobError)
        return error(exc.status, exc.message)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error(exc.status_code, str(exc.detail))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        manager.start(warm=warm)
        try:
            yield
        finally:
            manager.stop()

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    routes = [
        Route("/", index),
        Route("/favicon.ico", favicon),
        Route("/api/info", info),
        Route("/api/jobs", list_jobs, methods=["GET"]),
        Route("/api/jobs", create_job, methods=["POST"]),
        Route("/api/jobs/{job}", get_job, methods=["GET"]),
        Route("/api/jobs/{job}/structures/{name}", get_structure, methods=["GET"]),
        Route("/api/jobs/{job}/screen", screen_job, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    hosts = list(LOOPBACK_HOSTS) if allowed_hosts is None else allowed_hosts
    app = Starlette(
        routes=routes,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)],
        exception_handlers={JobError: job_error, HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.manager = manager
    return app
