"""Jobs of the web page: directories under ``--runs`` in exactly the layout of the CLI.

A job *is* a directory ``RUNS/<id>/`` as ``pccd generate --out RUNS/<id>`` writes it (``run.json``,
``summary.csv``, one CIF per crystal) and its screen is ``RUNS/<id>/screen/`` as ``pccd screen
RUNS/<id> --out RUNS/<id>/screen`` writes it. ``run.json`` holds every generation setting, so a
job is fully described by its directory: the page submits a job by writing ``run.json``, and the
worker (or a restarted server, or ``pccd generate`` with the same flags) generates from it and
resumes after the last finished batch. Nothing else is stored on disk; whether a job is queued,
running or failed is known only to the running server, and a restarted server queues every
partial run it can continue.

Generation and screening run one task at a time in one worker process (``spawn``), which keeps
the models loaded between jobs. A crash of that process marks its task failed; the next task
starts a fresh worker. A worker whose server is killed (SIGKILL leaves no time to stop it)
exits by itself, so the restarted server's worker is the only one writing into a job.

A job records the model it was made with (``run.json``: ``model``); the server offers every
shipped model (each directory with a ``pccd.json`` under ``models_dir``) and its ``--model``
as the default, and runs each job with its own.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import multiprocessing
import os
import queue
import re
import secrets
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from pccd.diffusion import DEFAULT_PRECISION, check_precision
from pccd.errors import InputError
from pccd.generator import WEIGHTS_DIR, describe_model, load_pretrained
from pccd.outputs import check_run_settings
from pccd.runs import SamplingSettings, generate_run
from pccd.screen.screening import ScreenSettings, screen_directory

JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
STRUCTURE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SCREEN_DIR = "screen"
#: MLIPs a request may ask for; ``module:factory`` would import code named by a request
SCREEN_MLIPS = ("chgnet", "7net-0")


#: seconds a client told "the queue is full" (429) is asked to wait before trying again
RETRY_AFTER_S = 5
#: how often a worker checks that the server that started it is still there
PARENT_CHECK_S = 0.2


class JobError(Exception):
    """A request that cannot be met; ``status`` is the HTTP status to answer with, ``headers``
    any the answer needs (``Retry-After`` of a full queue)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


# ---- the directory layout ------------------------------------------------------------------
def read_csv_rows(path: Path, key: str = "id") -> list[dict[str, str]]:
    """Rows of a result CSV; a half-written last line (no key) is skipped."""
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return [row for row in csv.DictReader(fh) if row.get(key)]


def read_run_json(directory: Path) -> dict | None:
    try:
        data = json.loads((directory / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


#: settings of a run the page leaves to the shell unless they are at their defaults (the form
#: has no field for them; a relaxation needs an MLIP the worker does not load)
SHELL_ONLY = ("repulsion", "guide", "valid_only", "max_draws", "relax")


def resolve_inside(root: Path, *parts: str) -> Path:
    """``root/parts…`` resolved (symlinks followed); 404 unless it stays inside ``root``."""
    root = root.resolve()
    path = root.joinpath(*parts).resolve()
    if path == root or not path.is_relative_to(root):
        raise JobError(404, "not found")
    return path


# ---- worker process --------------------------------------------------------------------------
_PIPELINES: dict[tuple[str, str], object] = {}


def _pipeline(model: str | None, precision: str = DEFAULT_PRECISION):
    """The worker's pipeline of ``model`` at ``precision``, loaded once."""
    key = (str(model), precision)
    if key not in _PIPELINES:
        _PIPELINES[key] = load_pretrained(model, precision=precision)
    return _PIPELINES[key]


def _run_generate(task: Mapping) -> None:
    directory = Path(task["dir"])
    recorded = read_run_json(directory)
    if recorded is None:
        raise InputError(f"{directory.name} has no run.json")
    settings = SamplingSettings.from_json(recorded)
    pipeline = _pipeline(task["model"], settings.precision)  # the job's own, as recorded
    generate_run(pipeline, settings, directory)


def _run_screen(task: Mapping) -> None:
    directory = Path(task["dir"])
    known = {f.name for f in fields(ScreenSettings)}  # run.json also records e.g. the input
    screen_directory(
        directory,
        directory / SCREEN_DIR,
        ScreenSettings(**{k: v for k, v in task["settings"].items() if k in known}),
        workers=1,
        threads_per_worker=int(task.get("threads") or 0) or os.cpu_count() or 1,
    )


def _exit_with_parent(parent: int) -> None:
    """End this process as soon as its parent is gone (it is then re-parented).

    A server killed with SIGKILL cannot stop its worker, which would go on writing into the
    job that the restarted server resumes with a worker of its own: two writers, duplicated
    rows. Polled in a daemon thread, because the worker's main thread is busy sampling.
    """
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(1)  # no cleanup: the rows written so far are flushed, the batch under way is lost


def _worker_main(conn, model: str | None, threads: int, parent: int | None = None) -> None:
    """Loop of the worker process: run one task at a time, answer ("ok"|"error", message)."""
    if parent is not None:
        threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    warnings.simplefilter("ignore")
    if threads:
        torch.set_num_threads(threads)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        try:
            if task["kind"] == "generate":
                _run_generate(task)
            elif task["kind"] == "screen":
                _run_screen(task)
            elif task["kind"] == "warm":
                _pipeline(model, task["precision"])
            reply = ("ok", "")
        except Exception as exc:
            reply = ("error", f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except (BrokenPipeError, EOFError, OSError):  # the server has gone: nobody to tell
            return


class WorkerDied(RuntimeError):
    pass


class Worker:
    """One long-lived ``spawn`` process that runs tasks sent through a pipe."""

    def __init__(self, model: str | None, threads: int):
        ctx = multiprocessing.get_context("spawn")  # torch and fork do not mix
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_worker_main,
            args=(child, model, threads, os.getpid()),
            daemon=True,
            name="pccd-web-worker",
        )
        self.process.start()
        child.close()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.is_alive()

    def run(self, task: Mapping, stop: threading.Event) -> tuple[str, str]:
        self.conn.send(dict(task))
        while not stop.is_set():
            try:
                if self.conn.poll(0.1):
                    return self.conn.recv()
            except (EOFError, OSError):
                break
            if not self.process.is_alive():
                try:  # it may have answered just before exiting
                    if self.conn.poll(0):
                        return self.conn.recv()
                except (EOFError, OSError):
                    pass
                break
        if stop.is_set():
            raise WorkerDied("the server stopped during this task")
        self.process.join(1)
        raise WorkerDied(f"the worker process died (exit code {self.process.exitcode})")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()  # an idle worker sees the end of its pipe and exits by itself
        self.process.join(3)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


# ---- the models ----------------------------------------------------------------------------
def offered_models(default: str | None = None, models_dir: str | Path | None = None) -> dict:
    """Name → :class:`~pccd.generator.ModelInfo` of the models the page offers: ``default`` (a
    shipped name or a directory; None is :data:`~pccd.generator.DEFAULT_MODEL`) first, then
    every model directory under ``models_dir`` (the shipped ones by default).

    A broken default is an error the user must see; a broken other model is left out with a
    warning, so one bad directory does not take the page down.
    """
    first = describe_model(default)
    models = {first.name or first.directory.name: first}
    root = Path(models_dir) if models_dir is not None else WEIGHTS_DIR
    for directory in sorted(p for p in root.glob("*/") if (p / "pccd.json").exists()):
        try:
            info = describe_model(directory)
        except (OSError, ValueError, KeyError, ImportError) as exc:
            logging.getLogger("pccd").warning("pccd serve: leaving out %s: %s", directory, exc)
            continue
        models.setdefault(info.name or directory.name, info)
    return models


# ---- the manager ----------------------------------------------------------------------------
@dataclass
class TaskState:
    status: str  # queued | running | done | failed
    error: str = ""
    queued_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None

    def to_dict(self) -> dict[str, object]:
        now = time.time()
        end = self.finished_at or now
        return {
            "status": self.status,
            "error": self.error or None,
            "seconds": round(end - self.started_at, 1) if self.started_at else None,
        }


class JobManager:
    """Jobs under ``runs``: their state, the task queue and the worker that runs it."""

    def __init__(
        self,
        runs: str | Path,
        model: str | None = None,
        *,
        threads: int = 0,
        reference: str | None = None,
        max_queue: int = 50,
        precision: str = "float32",
        models_dir: str | Path | None = None,
    ):
        self.runs = Path(runs).resolve()
        self.runs.mkdir(parents=True, exist_ok=True)
        #: every model the page offers, by name, the default (``model``) first
        self.models = offered_models(model, models_dir)
        #: the default model's own account of itself: name, family, samplers, timesteps
        self.model_info = next(iter(self.models.values()))
        self.model = str(self.model_info.directory)
        self.model_name = self.model_info.name
        #: conditions a request may use with the default model (the form shows only these)
        self.trained_conditions = self.model_info.trained_conditions
        self.threads = threads
        self.reference = reference
        self.max_queue = max_queue
        #: network precision of the jobs the page submits (a job resumes at its recorded one)
        self.precision = check_precision(precision)
        self._lock = threading.RLock()
        self._queue: queue.Queue = queue.Queue()
        self._pending = 0
        self._states: dict[tuple[str, str], TaskState] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.worker: Worker | None = None

    def model_for(self, name: str | None):
        """The :class:`~pccd.generator.ModelInfo` of a model the page offers (None: default)."""
        if name is None:
            return self.model_info
        if not isinstance(name, str) or name not in self.models:
            raise JobError(400, f"model must be one of {list(self.models)}, not {name!r}")
        return self.models[name]

    # -- life cycle --
    def start(self, warm: bool = False) -> None:
        """Start the runner thread; queue partial runs found on disk; optionally preload."""
        if self._thread is not None:
            return
        self._stop.clear()
        self.recover()
        if warm:
            with self._lock:
                self._pending += 1
            self._queue.put(("warm", ""))
        self._thread = threading.Thread(target=self._loop, name="pccd-web-jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if self.worker is not None:
            self.worker.close()
            self.worker = None

    def recover(self) -> list[str]:
        """Queue every partial run under ``runs`` this server can continue; returns their ids."""
        resumed = []
        for entry in sorted(self.runs.iterdir()):
            try:
                path = self.job_dir(entry.name)  # skips links out of runs, files, odd names
            except JobError:
                continue
            state = self.disk_state(path)
            if state is None:
                continue
            if not state["complete"]:
                if state["resumable"]:
                    self._enqueue(path.name, "generate", force=True)
                    resumed.append(path.name)
            else:
                screen = self.screen_disk_state(path)
                if (
                    screen is not None
                    and not screen["complete"]
                    and screen["settings"]
                    and screen["settings"].get("mlip") in SCREEN_MLIPS
                ):
                    self._enqueue(path.name, "screen", force=True, settings=screen["settings"])
                    resumed.append(path.name)
        return resumed

    # -- disk --
    def job_dir(self, job_id: str) -> Path:
        if not isinstance(job_id, str) or not JOB_ID.match(job_id):
            raise JobError(404, f"no job {job_id!r}")
        path = resolve_inside(self.runs, job_id)
        if path.parent != self.runs or not path.is_dir():
            raise JobError(404, f"no job {job_id!r}")
        return path

    def disk_state(self, path: Path) -> dict | None:
        """What a run directory holds; None when it is not a run."""
        settings = read_run_json(path)
        summary = path / "summary.csv"
        if not summary.exists() and (settings is None or "n" not in settings):
            return None  # not a generation run (e.g. the run.json of a screen or evaluation)
        rows = read_csv_rows(summary)
        settings = settings or {}
        total = settings.get("n") if isinstance(settings.get("n"), int) else len(rows)
        done = len(rows)
        complete = done >= total
        if settings.get("valid_only"):  # `pccd generate --valid-only`: n passing crystals
            done = sum(1 for r in rows if r.get("status") == "ok")
            complete = done >= total or (path / "acceptance.json").exists()
        reason = "" if complete else self._leave_to_shell(settings)
        return {
            "settings": settings,
            "rows": rows,
            "done": done,
            "total": total,
            "complete": complete,
            "resumable": not complete and not reason,
            "reason": reason,
        }

    def _leave_to_shell(self, recorded: dict) -> str:
        """Why the page cannot continue the run ``recorded`` (a run.json) ("": it can)."""
        try:
            settings = SamplingSettings.from_json(recorded)
        except InputError as exc:
            return f"{exc}; continue it from the shell"
        default = SamplingSettings(n=settings.n)
        options = [k for k in SHELL_ONLY if getattr(settings, k) != getattr(default, k)]
        if settings.elements is None:
            return "made with one element list per crystal; continue it from the shell"
        if options:
            return f"made with {', '.join(options)}; continue it from the shell"
        if settings.model not in self.models:
            return (
                f"made with model {settings.model!r}, this server has "
                f"{', '.join(map(repr, self.models))}; continue it from the shell"
            )
        return ""

    def screen_disk_state(self, path: Path) -> dict | None:
        out = path / SCREEN_DIR
        if not out.is_dir():
            return None
        rows = read_csv_rows(out / "screen.csv")
        total = sum(1 for p in path.iterdir() if p.suffix.lower() == ".cif")
        return {
            "settings": read_run_json(out),
            "rows": rows,
            "done": len(rows),
            "total": total,
            "complete": (out / "screen.csv").exists() and len(rows) >= total,
        }

    # -- queue --
    def _check_room(self) -> None:
        """429 with ``Retry-After`` when ``max_queue`` tasks wait or run (call with the lock)."""
        if self._pending >= self.max_queue:
            raise JobError(
                429,
                f"the queue is full ({self.max_queue} tasks); try again in {RETRY_AFTER_S} s",
                {"Retry-After": str(RETRY_AFTER_S)},
            )

    def _enqueue(self, job_id: str, kind: str, force: bool = False, **extra) -> TaskState:
        with self._lock:
            if not force:
                self._check_room()
            state = TaskState("queued")
            self._states[(job_id, kind)] = state
            self._pending += 1
        self._queue.put((kind, job_id, extra))
        return state

    def submit_generate(self, job_id: str, settings: SamplingSettings) -> TaskState:
        """Create ``runs/<job_id>`` with its run.json and queue its generation."""
        if not JOB_ID.match(job_id):
            raise JobError(400, f"job name {job_id!r} must match {JOB_ID.pattern}")
        path = resolve_inside(self.runs, job_id)
        if path.parent != self.runs:
            raise JobError(400, "a job name is one directory name")
        with self._lock:
            if path.exists():
                raise JobError(409, f"job {job_id!r} exists already")
            self._check_room()  # before the directory: a refused job leaves nothing behind
            path.mkdir()
            check_run_settings(path, settings.to_json())
            return self._enqueue(job_id, "generate")

    def submit_screen(self, job_id: str, settings: dict[str, object]) -> TaskState:
        path = self.job_dir(job_id)
        with self._lock:
            gen = self.state(job_id, "generate")
            disk = self.disk_state(path)
            if disk is None:
                raise JobError(404, f"no job {job_id!r}")
            if (gen is not None and gen.status in ("queued", "running")) or not disk["complete"]:
                raise JobError(409, "the job has not finished generating; screen it when done")
            current = self.state(job_id, "screen")
            if current is not None and current.status in ("queued", "running"):
                raise JobError(409, f"the screen of {job_id} is {current.status} already")
            screen = self.screen_disk_state(path)
            if screen is not None and screen["settings"]:
                previous = screen["settings"]
                diff = sorted(k for k in settings if previous.get(k) != settings[k])
                if diff:
                    shown = {k: previous.get(k) for k in settings}
                    message = f"{job_id} was screened with other settings ({', '.join(diff)})"
                    raise JobError(409, f"{message}: {shown}")
            return self._enqueue(job_id, "screen", settings=settings)

    def state(self, job_id: str, kind: str) -> TaskState | None:
        with self._lock:
            return self._states.get((job_id, kind))

    def queue_position(self, job_id: str, kind: str) -> int | None:
        with self._lock:
            items = list(self._queue.queue)
        for i, item in enumerate(items):
            if item[0] == kind and item[1] == job_id:
                return i + 1
        return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._run(item)
            finally:
                with self._lock:
                    self._pending -= 1

    def _run(self, item) -> None:
        if item[0] == "warm":
            try:
                self._ensure_worker().run({"kind": "warm", "precision": self.precision}, self._stop)
            except WorkerDied:
                self._drop_worker()
            return
        kind, job_id, extra = item
        state = self.state(job_id, kind)
        if state is None:
            return
        with self._lock:
            state.status, state.started_at = "running", time.time()
        task = {
            "kind": kind,
            "dir": str(self.runs / job_id),
            "model": self._job_model(job_id),
            "threads": self.threads,
            **extra,
        }
        try:
            outcome, message = self._ensure_worker().run(task, self._stop)
        except WorkerDied as exc:
            outcome, message = "error", str(exc)
            self._drop_worker()
        with self._lock:
            state.finished_at = time.time()
            state.status = "done" if outcome == "ok" else "failed"
            state.error = message

    def _job_model(self, job_id: str) -> str:
        """The directory of the model a job's run.json names (the default when it names none
        this server has: the worker then refuses the run, naming both)."""
        name = (read_run_json(self.runs / job_id) or {}).get("model")
        info = self.models.get(name) if isinstance(name, str) else None
        return str((info or self.model_info).directory)

    def _ensure_worker(self) -> Worker:
        if self.worker is None or not self.worker.alive():
            self._drop_worker()
            self.worker = Worker(self.model, self.threads)
        return self.worker

    def _drop_worker(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None

    def new_job_id(self, label: str) -> str:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        safe = re.sub(r"[^A-Za-z0-9-]", "", label)[:40] or "job"
        return f"{stamp}-{safe}-{secrets.token_hex(2)}"
