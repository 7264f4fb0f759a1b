"""``pccd serve`` as a user runs it: a separate process on a loopback port, with the tiny model.

What only a real server shows: its ``/openapi.json`` holding against generated requests
(schemathesis), a SIGKILL in the middle of a job and a restart, and the token printed when it
binds an address other than loopback.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.common import free_port, schemathesis_command

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


#: runs pccd serve with keyword arguments given as JSON (what the CLI passes, plus a few the
#: CLI does not take, e.g. max_queue); stdout carries the printed URL
SERVE = "import json, sys; from pccd.web import serve; serve(**json.loads(sys.argv[1]))"


class Server:
    """One ``pccd serve`` process; ``url`` once it answers."""

    def __init__(self, runs: Path, model: Path | str | None, **kwargs):
        self.port = kwargs.pop("port", None) or free_port()
        args = {"port": self.port, "runs": str(runs), "threads": 1}
        if model is not None:  # else the shipped default
            args["model"] = str(model)
        args.update(kwargs, log_level="warning")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, json.dumps(args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.printed = ""

    def wait(self, headers: dict[str, str] | None = None, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.request("/api/info", headers), timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # it answers (e.g. 401 without the token)
            except OSError:
                if self.proc.poll() is not None:
                    self.printed += self.proc.stdout.read()
                    raise AssertionError(f"pccd serve exited: {self.printed}") from None
                assert time.monotonic() < deadline, "pccd serve did not answer"
                time.sleep(0.2)

    def request(self, path: str, headers: dict[str, str] | None = None, body=None):
        data = None if body is None else json.dumps(body).encode()
        headers = dict(headers or {})
        if data is not None:
            headers["Content-Type"] = "application/json"
        return urllib.request.Request(self.url + path, data=data, headers=headers)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.request(path, headers), timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.request(path, body=body), timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def children(self) -> list[int]:
        """Pids of the server's child processes (its worker), from /proc: each thread lists
        the children it started, and the worker is started by the server's job thread."""
        tasks = Path(f"/proc/{self.proc.pid}/task").glob("*/children")
        return [int(pid) for path in tasks for pid in path.read_text().split()]

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()  # the server this test started
        self.printed += self.proc.communicate(timeout=60)[0] or ""
        return self.printed


@contextlib.contextmanager
def serving(runs: Path, model: Path | str | None, **kwargs) -> Iterator[Server]:
    server = Server(runs, model, **kwargs)
    try:
        server.wait()
        yield server
    finally:
        server.stop()


#: summary.csv columns that do not depend on the last digits of the sampled numbers
EXACT = ("id", "elements", "formula", "atoms", "status", "reason", "cif")


def summary(directory: Path) -> list[dict[str, str]]:
    with (directory / "summary.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


# ---- the schema holds against generated requests --------------------------------------------
def test_schemathesis_finds_no_5xx_and_no_answer_off_the_schema(tmp_path, tiny_model_dir):
    """A few hundred generated requests, valid and not, against every operation: no 5xx, and
    every status, content type, header and body as /openapi.json documents it. Bounded: 30
    fuzzed cases per operation after the coverage phase's, and 300 s in all."""
    pytest.importorskip("schemathesis")
    report = tmp_path / "report.xml"
    # max_queue 2: valid jobs soon meet a full queue, so its 429 is checked too
    with serving(tmp_path / "runs", tiny_model_dir, max_n=4, max_queue=2) as server:
        result = subprocess.run(
            schemathesis_command(server.url, report),
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,  # it keeps a .schemathesis folder where it runs
        )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    suite = re.search(r'<testsuite [^>]*tests="(\d+)"', report.read_text())
    assert suite and int(suite.group(1)) == 6, report.read_text()[:2000]  # every operation
    cases = re.search(r"(\d+) generated, (\d+) passed", output)
    assert cases, output[-3000:]
    assert int(cases.group(1)) >= 200 and cases.group(1) == cases.group(2), output[-3000:]


# ---- SIGKILL in the middle of a job ---------------------------------------------------------
@pytest.mark.slow
def test_a_killed_server_resumes_its_job_with_no_crystal_lost_or_doubled(tmp_path):
    """A shipped model, whose crystals decode (the tiny random one's do not), so that the
    CIFs served mid-run can be parsed and compared with an uninterrupted run's: pccd-cpu, whose
    DDIM chain this job's timing was sized for."""
    from pymatgen.core import Structure

    from pccd.generator import Request, load_pretrained
    from pccd.runs import generate_to_directory

    runs = tmp_path / "runs"
    job = {"elements": ["Na", "Cl"], "n": 8, "batch_size": 2, "steps": 100, "name": "killed"}
    served_cifs = 0
    with serving(runs, "pccd-cpu") as server:
        status, body = server.post("/api/jobs", job)
        assert status == 201, body
        deadline = time.monotonic() + 240
        while True:  # every crystal the page serves mid-run is a whole file
            status, body = server.get("/api/jobs/killed")
            assert status == 200, body
            for row in body["structures"]:
                if row["cif"]:
                    Structure.from_str(row["cif"], fmt="cif")
                    served_cifs += 1
            if body["progress"]["done"] >= 4:
                break
            assert body["status"] in ("queued", "running"), body
            assert time.monotonic() < deadline, body
            time.sleep(0.2)
        assert body["progress"]["done"] < 8, "the job finished before the kill; make it slower"
        workers = server.children()
        assert workers, "no worker process"
        os.kill(server.proc.pid, signal.SIGKILL)  # the server this test started
        server.proc.wait(30)
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() for pid in workers):  # it must not write on
            assert time.monotonic() < deadline, f"worker {workers} outlived its server"
            time.sleep(0.1)
    assert served_cifs > 0
    left = summary(runs / "killed")
    assert 4 <= len(left) < 8

    with serving(runs, "pccd-cpu") as server:
        deadline = time.monotonic() + 240
        while (body := server.get("/api/jobs/killed")[1])["status"] != "done":
            assert body["status"] in ("queued", "running"), body
            assert time.monotonic() < deadline, body
            time.sleep(0.3)
        assert body["progress"] == {"done": 8, "total": 8}
    rows = summary(runs / "killed")
    assert [r["id"] for r in rows] == [str(k) for k in range(8)]  # each once, in order
    assert rows[: len(left)] == left  # finished rows were never rewritten
    # and they are the crystals an uninterrupted run makes
    reference = tmp_path / "reference"
    generate_to_directory(
        load_pretrained("pccd-cpu"),
        Request.parse(["Na", "Cl"]),
        8,
        reference,
        batch_size=2,
        sampler="ddim",
        steps=100,
        guidance_scale=1.0,
        seed=0,
    )
    # (equal but for the last digits: the server's worker samples on 1 thread, this test on
    # all, and floating-point sums differ with the thread count)
    theirs = summary(reference)
    for ours, ref in zip(rows, theirs, strict=True):
        assert {k: ours[k] for k in EXACT} == {k: ref[k] for k in EXACT}
        for key in ("density", "min_distance", "covalent_ratio"):
            if ref[key]:
                assert float(ours[key]) == pytest.approx(float(ref[key]), rel=1e-2, abs=1e-3)
        if ref["cif"]:
            mine = Structure.from_file(runs / "killed" / ours["cif"])
            assert mine.matches(Structure.from_file(reference / ref["cif"]))


# ---- a token off loopback -------------------------------------------------------------------
@pytest.mark.slow
def test_binding_all_addresses_prints_a_token_and_refuses_requests_without_it(
    tmp_path, tiny_model_dir
):
    port = free_port()
    server = Server(tmp_path / "runs", tiny_model_dir, host="0.0.0.0", port=port)
    try:
        server.wait()
        assert server.get("/api/info")[0] == 401
        status, body = server.post("/api/jobs", {"elements": ["Na"]})
        assert status == 401 and "token" in body["error"]
    finally:
        printed = server.stop()
    match = re.search(rf"http://0\.0\.0\.0:{port}/\?token=([A-Za-z0-9_-]+)", printed)
    assert match, printed
    token = match.group(1)
    assert len(token) >= 32
    again = Server(tmp_path / "runs", tiny_model_dir, host="0.0.0.0", port=port, token=token)
    try:
        again.wait()
        assert again.get("/api/info")[0] == 401
        status, info = again.get("/api/info", {"Authorization": f"Bearer {token}"})
        assert status == 200 and info["model"] == "tiny-test"
    finally:
        assert f"?token={token}" in again.stop()


def test_a_port_someone_listens_on_is_refused_in_one_line_before_anything_loads(tmp_path):
    from pccd.errors import InputError
    from pccd.web import serve

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(InputError, match=rf"cannot listen on 127\.0\.0\.1:{port}"):
            serve(runs=tmp_path / "runs", port=port)
    assert not (tmp_path / "runs").exists()
