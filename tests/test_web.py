"""``pccd serve``: the JSON API through Starlette's test client, with the tiny random model.

Jobs really run (in the server's worker process), so these tests cover the life cycle, the
directory layout shared with ``pccd generate`` / ``pccd screen``, resuming after a restart, a
crashing worker, and every kind of bad request, path traversal included.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from pymatgen.core import Structure
from starlette.testclient import TestClient

from pccd.outputs import ResultTable, check_run_settings
from pccd.runs import SamplingSettings
from pccd.web.app import MAX_BODY_BYTES, create_app
from tests.conftest import nacl, silicon

BASE = "http://127.0.0.1"
JSON = {"Content-Type": "application/json"}
SMALL = {"elements": ["Na", "Cl"], "n": 4, "seed": 0, "steps": 2, "batch_size": 2}


def client_for(runs: Path, model: Path, **kwargs) -> TestClient:
    return TestClient(create_app(runs, str(model), **kwargs), base_url=BASE)


def wait_for(client: TestClient, job_id: str, key: str = "status", timeout: float = 180.0):
    """Poll GET /api/jobs/<id> until the job (or its screen) is done or failed."""
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/api/jobs/{job_id}").json()
        status = body[key]["status"] if key == "screen" and body[key] else body.get(key)
        if status in ("done", "failed"):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {status} after {timeout} s: {body}")
        time.sleep(0.2)


def summary_rows(directory: Path) -> list[dict[str, str]]:
    with (directory / "summary.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def shell_run(runs: Path, name: str = "shell-run") -> Path:
    """A run directory as `pccd generate` writes it, with two real crystals and one failure."""
    from pccd.evaluate.geometry import describe_structure
    from pccd.runs import SUMMARY_COLUMNS

    directory = runs / name
    check_run_settings(
        directory,
        {"elements": ["Na", "Cl"], "formula": None, "band_gap": None, "magnetic": None, "n": 3},
    )
    table = ResultTable(directory / "summary.csv", SUMMARY_COLUMNS, key="id")
    for sid, structure in (("0", nacl()), ("1", silicon())):
        cif = f"{sid}_{structure.composition.reduced_formula}.cif"
        structure.to(filename=str(directory / cif))
        table.append(
            {"id": sid, "elements": "Na-Cl", **describe_structure(structure)}
            | {"status": "ok", "cif": cif}
        )
    table.append({"id": "2", "elements": "Na-Cl", "status": "failed", "reason": "no_atoms"})
    return directory


# ---- life cycle ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_job_life_cycle_writes_the_layout_of_pccd_generate(tmp_path, tiny_model_dir):
    from pccd.generator import Request
    from pccd.pipeline import PCCDPipeline
    from pccd.runs import generate_to_directory

    runs = tmp_path / "runs"
    with client_for(runs, tiny_model_dir) as client:
        response = client.post("/api/jobs", json=SMALL)
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        assert response.json()["status"] == "queued"
        body = wait_for(client, job_id)
        assert body["status"] == "done", body
        assert body["progress"] == {"done": 4, "total": 4}
        assert [s["id"] for s in body["structures"]] == ["0", "1", "2", "3"]
        for s in body["structures"]:
            assert {"id", "formula", "cif", "status", "reason", "covalent_ratio"} <= set(s)
        listed = client.get("/api/jobs").json()["jobs"]
        assert [j["id"] for j in listed] == [job_id]
        assert listed[0]["status"] == "done"
        info = client.get("/api/info").json()
        assert info["model"] == "tiny-test"
        # the tiny model embeds every condition and its card lists none: all may be asked
        assert "stability" in info["conditions"]

    # the same request from Python (what `pccd generate` calls) writes the same run
    shell = tmp_path / "shell"
    generate_to_directory(
        PCCDPipeline.from_pretrained(tiny_model_dir),
        Request.parse(["Na", "Cl"]),
        4,
        shell,
        batch_size=2,
        sampler="ddim",
        steps=2,
        guidance_scale=1.0,
        seed=0,
    )
    job = runs / job_id
    assert json.loads((job / "run.json").read_text()) == json.loads(
        (shell / "run.json").read_text()
    )
    assert summary_rows(job) == summary_rows(shell)
    assert sorted(p.name for p in job.iterdir()) == sorted(p.name for p in shell.iterdir())

    # and `pccd generate` with the same flags continues an interrupted page job
    from pccd.cli import main

    lines = (job / "summary.csv").read_text().splitlines(keepends=True)
    (job / "summary.csv").write_text("".join(lines[:3]))
    flags = [
        "--elements",
        "Na,Cl",
        "-n",
        "4",
        "--batch-size",
        "2",
        "--steps",
        "2",
        "--seed",
        "0",
        "--quiet",
    ]
    assert main(["generate", *flags, "--model", str(tiny_model_dir), "--out", str(job)]) == 0
    assert summary_rows(job) == summary_rows(shell)


@pytest.mark.slow
def test_formula_job_and_named_job(tmp_path, tiny_model_dir):
    runs = tmp_path / "runs"
    with client_for(runs, tiny_model_dir) as client:
        body = {"formula": "Na2Cl2", "n": 2, "steps": 1, "name": "my-csp", "guidance": 2.0}
        response = client.post("/api/jobs", json=body)
        assert response.status_code == 201, response.text
        assert response.json()["id"] == "my-csp"
        done = wait_for(client, "my-csp")
        assert done["status"] == "done"
        assert done["formula"] == "Na2Cl2"
        settings = json.loads((runs / "my-csp" / "run.json").read_text())
        assert settings["formula"] == [2, 2]
        assert settings["guidance_scale"] == 2.0
        again = client.post("/api/jobs", json=body)
        assert again.status_code == 409


@pytest.mark.slow
def test_shell_run_shows_up_with_downloads_in_every_format(tmp_path, tiny_model_dir):
    from ase.io import read
    from pymatgen.io.vasp import Poscar

    runs = tmp_path / "runs"
    shell_run(runs)
    (runs / "not-a-run").mkdir()  # no run.json, no summary.csv: not listed
    check_run_settings(runs / "a-screen", {"mlip": "chgnet", "fmax": 0.05})  # not listed either
    with client_for(runs, tiny_model_dir) as client:
        jobs = client.get("/api/jobs").json()["jobs"]
        assert [j["id"] for j in jobs] == ["shell-run"]
        body = client.get("/api/jobs/shell-run").json()
        assert body["status"] == "done"
        rows = {s["id"]: s for s in body["structures"]}
        assert rows["0"]["formula"] == "NaCl" and rows["0"]["atoms"] == 8
        assert rows["0"]["plausible"] is True
        assert Structure.from_str(rows["0"]["cif"], fmt="cif").composition.reduced_formula == "NaCl"
        assert rows["2"]["status"] == "failed" and rows["2"]["cif"] is None
        assert client.get("/api/jobs/shell-run?cif=0").json()["structures"][0]["cif"] is None

        base = "/api/jobs/shell-run/structures/0"
        cif = client.get(f"{base}.cif")
        assert cif.status_code == 200
        assert "attachment" in cif.headers["content-disposition"]
        s = Structure.from_str(cif.text, fmt="cif")
        assert s.matches(nacl())
        atoms = read(io.StringIO(client.get(f"{base}.extxyz").text), format="extxyz")
        assert sorted(atoms.get_chemical_symbols()) == sorted(str(x.specie) for x in nacl())
        poscar = Poscar.from_str(client.get(f"{base}.vasp").text)
        assert poscar.structure.matches(nacl())
        detail = client.get(base).json()
        assert detail["formula"] == "NaCl"
        assert detail["lattice"]["a"] == pytest.approx(5.64)
        assert detail["lattice"]["alpha"] == pytest.approx(90.0)
        assert len(detail["sites"]) == 8
        assert client.get("/api/jobs/shell-run/structures/1.cif").status_code == 200


# ---- restart and crash --------------------------------------------------------------------------
@pytest.mark.slow
def test_restarted_server_resumes_partial_and_queued_jobs(tmp_path, tiny_model_dir):
    runs = tmp_path / "runs"
    with client_for(runs, tiny_model_dir) as client:
        job_id = client.post("/api/jobs", json=SMALL).json()["id"]
        assert wait_for(client, job_id)["status"] == "done"
    job = runs / job_id
    complete = summary_rows(job)
    # cut the run after its first batch, as an interrupted `pccd generate` leaves it
    lines = (job / "summary.csv").read_text().splitlines(keepends=True)
    (job / "summary.csv").write_text("".join(lines[:3]))
    # a job queued but never started: only its run.json exists
    from pccd.generator import Request

    queued = runs / "queued-job"
    check_run_settings(
        queued,
        SamplingSettings.for_request(
            Request.parse(["Mg", "O"]),
            3,
            batch_size=2,
            model="tiny-test",
            sampler="ddim",
            steps=1,
            guidance_scale=1.0,
            seed=3,
        ).to_json(),
    )
    # a partial run reached through a link out of --runs is neither listed nor resumed
    outside = tmp_path / "outside"
    check_run_settings(outside, json.loads((queued / "run.json").read_text()))
    (runs / "linked-job").symlink_to(outside)
    # a partial run made with an option the page does not set is shown, not resumed
    relaxed = runs / "relaxed-run"
    check_run_settings(relaxed, {**json.loads((queued / "run.json").read_text()), "relax": {}})
    # a partial run of another model is shown, not resumed
    other = runs / "other-model"
    check_run_settings(other, {"elements": ["Si"], "n": 5, "model": "someone-else"})
    (other / "summary.csv").write_text("id,status\n0,failed\n")

    with client_for(runs, tiny_model_dir) as client:
        assert wait_for(client, job_id)["status"] == "done"
        assert wait_for(client, "queued-job")["status"] == "done"
        assert summary_rows(job) == complete
        assert len(summary_rows(queued)) == 3
        assert client.get("/api/jobs/linked-job").status_code == 404
        assert "linked-job" not in [j["id"] for j in client.get("/api/jobs").json()["jobs"]]
        body = client.get("/api/jobs/other-model").json()
        assert body["status"] == "failed"
        assert "someone-else" in body["error"]
        assert body["progress"] == {"done": 1, "total": 5}
        body = client.get("/api/jobs/relaxed-run").json()
        assert body["status"] == "failed" and "relax" in body["error"]
    assert not (outside / "summary.csv").exists()
    assert not (relaxed / "summary.csv").exists()


@pytest.mark.slow
def test_a_crashing_worker_fails_its_job_and_the_server_goes_on(tmp_path, tiny_model_dir):
    runs = tmp_path / "runs"
    with client_for(runs, tiny_model_dir) as client:
        manager = client.app.state.manager
        slow = {"elements": ["Na", "Cl"], "n": 400, "sampler": "ddpm", "steps": 1000}
        job_id = client.post("/api/jobs", json=slow).json()["id"]
        deadline = time.monotonic() + 120
        while client.get(f"/api/jobs/{job_id}").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        while manager.worker is None or manager.worker.pid is None:
            time.sleep(0.05)
        os.kill(manager.worker.pid, signal.SIGKILL)  # the worker this test's server started
        body = wait_for(client, job_id)
        assert body["status"] == "failed"
        assert "died" in body["error"]
        assert client.get("/api/info").status_code == 200
        after = client.post("/api/jobs", json=SMALL).json()["id"]
        assert wait_for(client, after)["status"] == "done"


# ---- screening ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_screen_fills_rows_in_the_layout_of_pccd_screen(tmp_path, tiny_model_dir):
    pytest.importorskip("chgnet")
    runs = tmp_path / "runs"
    shell_run(runs)
    with client_for(runs, tiny_model_dir, threads=1) as client:
        bad = client.post("/api/jobs/shell-run/screen", json={"mlip": "os:system"})
        assert bad.status_code == 400
        response = client.post("/api/jobs/shell-run/screen", json={"max_steps": 2})
        assert response.status_code == 202, response.text
        again = client.post("/api/jobs/shell-run/screen", json={"max_steps": 2})
        assert again.status_code == 409
        body = wait_for(client, "shell-run", key="screen", timeout=600)
        assert body["screen"]["status"] == "done", body["screen"]
        assert body["screen"]["progress"] == {"done": 2, "total": 2}
        rows = {s["id"]: s for s in body["structures"]}
        assert rows["0"]["screen_status"] in ("ok", "no_hull", "relax_failed")
        assert "e_above_hull" in rows["1"]
        other = client.post("/api/jobs/shell-run/screen", json={"max_steps": 3})
        assert other.status_code == 409
        assert "other settings" in other.json()["error"]
        if rows["0"]["relaxed"]:
            relaxed = client.get("/api/jobs/shell-run/structures/0.cif?relaxed=1")
            assert relaxed.status_code == 200
    screen = runs / "shell-run" / "screen"
    assert (screen / "screen.csv").exists() and (screen / "run.json").exists()
    assert json.loads((screen / "run.json").read_text())["max_steps"] == 2

    # an interrupted screen is resumed by a restarted server
    lines = (screen / "screen.csv").read_text().splitlines(keepends=True)
    (screen / "screen.csv").write_text("".join(lines[:2]))
    with client_for(runs, tiny_model_dir, threads=1) as client:
        body = wait_for(client, "shell-run", key="screen", timeout=600)
        assert body["screen"]["status"] == "done", body["screen"]
        assert body["screen"]["progress"] == {"done": 2, "total": 2}
    assert len((screen / "screen.csv").read_text().splitlines()) == 3


# ---- bad requests -------------------------------------------------------------------------------
BAD_JOBS = [
    ({"elements": ["Na", "Xx"]}, 400, "unknown element"),
    ({"elements": ["Na", "Cl", "O", "K"]}, 400, "elements"),
    ({"elements": ["Na", "Na"]}, 400, "repeated"),
    ({"elements": "Na,Cl", "n": 0}, 400, "n must be between"),
    ({"elements": ["Na"], "n": 1001}, 400, "n must be between"),
    ({"elements": ["Na"], "n": "ten"}, 400, "whole number"),
    ({"elements": ["Na"], "n": True}, 400, "whole number"),
    ({"elements": ["Na"], "n": 2.5}, 400, "whole number"),
    ({"elements": ["Na"], "steps": 0}, 400, "steps"),
    ({"elements": ["Na"], "steps": 100000}, 400, "steps"),
    ({"elements": ["Na"], "seed": -1}, 400, "seed"),
    ({"elements": ["Na"], "guidance": -1}, 400, "guidance"),
    ({"elements": ["Na"], "guidance": 1, "guidance_scale": 1}, 400, "not both"),
    ({"elements": ["Na"], "band_gap": -0.5}, 400, "band_gap"),
    ({"elements": ["Na"], "band_gap": "wide"}, 400, "band_gap"),
    ({"elements": ["Na"], "sampler": "euler"}, 400, "sampler"),
    ({"elements": ["Na"], "magnetic": "XYZ"}, 400, "magnetic"),
    ({"elements": ["Na"], "stability": "metastable"}, 400, "stability"),
    ({"elements": ["Na"], "stability": 1}, 400, "stability"),
    ({"elements": ["Na"], "batch_size": 1000}, 400, "batch_size"),
    ({"elements": ["Na"], "model": "/etc"}, 400, "model must be one of"),
    ({"elements": ["Na"], "out": "/tmp/x"}, 400, "unknown field"),
    ({"elements": [1, 2]}, 400, "elements"),
    ({"elements": {"Na": 1}}, 400, "elements"),
    ({}, 400, "give the elements"),
    ({"formula": "Xy2"}, 400, "unknown element"),
    ({"formula": "Na10Cl10"}, 400, "atoms"),
    ({"formula": "Na0.5Cl"}, 400, "whole"),
    ({"formula": "NaCl", "elements": ["K", "Cl"]}, 400, "not the requested"),
    ({"formula": 12}, 400, "formula"),
    ({"elements": ["Na"], "name": "../evil"}, 400, "job name"),
    ({"elements": ["Na"], "name": "a/b"}, 400, "job name"),
    ({"elements": ["Na"], "name": ".hidden"}, 400, "job name"),
    ({"elements": ["Na"], "name": "/etc/cron.d"}, 400, "job name"),
    ({"elements": ["Na"], "name": 5}, 400, "name"),
]


def test_page_offers_only_the_conditions_the_model_learned(tmp_path):
    """The page shows the stability choice only for a model trained with it (app.js unhides
    it from the chosen model's conditions): the default pccd-atoms learned it, pccd-cpu
    predates it."""
    from pccd.web.jobs import JobManager

    manager = JobManager(tmp_path / "runs")  # the default model; nothing is started
    assert manager.trained_conditions == ("elements", "formula", "band_gap", "stability")
    cpu = JobManager(tmp_path / "runs", "pccd-cpu")
    assert cpu.trained_conditions == ("elements", "band_gap", "formula")
    html = (Path(__file__).resolve().parents[1] / "src/pccd/web/static/index.html").read_text()
    assert 'id="f-stability-row" hidden' in html


@pytest.fixture
def idle_client(tmp_path, tiny_model_dir):
    """A server whose worker never starts (no valid job reaches it)."""
    runs = tmp_path / "runs"
    shell_run(runs)
    with client_for(runs, tiny_model_dir, max_n=1000) as client:
        yield client, runs


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(("body", "status", "message"), BAD_JOBS)
def test_bad_job_requests_get_4xx_with_a_message(idle_client, body, status, message):
    client, runs = idle_client
    before = _tree(runs.parent)
    response = client.post("/api/jobs", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert _tree(runs.parent) == before  # nothing created anywhere


def test_malformed_bodies(idle_client):
    client, runs = idle_client
    cases = [
        (b"{not json", JSON, 400, "malformed JSON"),
        (b"[1, 2]", JSON, 400, "JSON object"),
        (b'"Na"', JSON, 400, "JSON object"),
        (b"\xff\xfe", JSON, 400, "malformed JSON"),
        (b'{"elements": ["Na"]}', {"Content-Type": "text/plain"}, 415, "application/json"),
        (b"elements=Na", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "JSON"),
        (b'{"elements": ["Na"]}', {}, 415, "JSON"),
        (
            json.dumps({"elements": ["Na"], "pad": "x" * MAX_BODY_BYTES}).encode(),
            JSON,
            413,
            "larger",
        ),
    ]
    before = _tree(runs)
    for content, headers, status, message in cases:
        response = client.post("/api/jobs", content=content, headers=headers)
        assert response.status_code == status, (content[:40], response.text)
        assert message in response.json()["error"]

    def chunks():  # no Content-Length: the cap holds while streaming
        for _ in range(MAX_BODY_BYTES // 1000 + 2):
            yield b" " * 1000

    response = client.post("/api/jobs", content=chunks(), headers=JSON)
    assert response.status_code == 413
    assert _tree(runs) == before


def test_traversal_and_unknown_paths_are_404(idle_client, tmp_path):
    client, runs = idle_client
    secret = tmp_path / "secret.cif"
    nacl().to(filename=str(secret))
    (runs / "escape").symlink_to(tmp_path)  # a link out of --runs
    (runs / "shell-run" / "9_link.cif").symlink_to(secret)
    with (runs / "shell-run" / "summary.csv").open("a") as fh:  # a row naming a file outside
        fh.write("9,Na-Cl,NaCl,8,Fm-3m,2.1,2.8,1.0,1,ok,,../../secret.cif\n")
        fh.write("8,Na-Cl,NaCl,8,Fm-3m,2.1,2.8,1.0,1,ok,,9_link.cif\n")
    paths = [
        "/api/jobs/..",
        "/api/jobs/%2e%2e",
        "/api/jobs/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/api/jobs/..%2F..%2Fetc",
        "/api/jobs/escape",
        "/api/jobs/escape/structures/secret.cif",
        "/api/jobs/nope",
        "/api/jobs/shell-run/structures/..%2f..%2fsecret.cif",
        "/api/jobs/shell-run/structures/%2e%2e.cif",
        "/api/jobs/shell-run/structures/run.json",
        "/api/jobs/shell-run/structures/9.cif",
        "/api/jobs/shell-run/structures/8.cif",
        "/api/jobs/shell-run/structures/9.vasp",
        "/api/jobs/shell-run/structures/42.cif",
        "/api/jobs/shell-run/structures/2.cif",
        "/api/jobs/shell-run/structures/0.exe",
        "/api/jobs/shell-run/structures/0.cif?relaxed=1",
        "/static/../app.py",
        "/static/%2e%2e/app.py",
        "/static/..%2fapp.py",
        "/api/nothing",
    ]
    for path in paths:
        response = client.get(path)
        assert response.status_code == 404, (path, response.status_code, response.text[:200])
        assert "Fm-3m" not in response.text and "_cell_length_a" not in response.text
    assert [j["id"] for j in client.get("/api/jobs").json()["jobs"]] == ["shell-run"]
    assert client.post("/api/jobs/nope/screen", json={}).status_code == 404
    assert client.post("/api/jobs/%2e%2e/screen", json={}).status_code == 404
    assert client.post("/api/jobs/shell-run/screen", json={"mlip": "x:y"}).status_code == 400
    assert client.post("/api/jobs/shell-run/screen", json={"fmax": 0}).status_code == 400
    assert client.post("/api/jobs/shell-run/screen", json={"reference": "/x"}).status_code == 400
    assert client.delete("/api/jobs/shell-run").status_code == 405


def test_requests_for_other_hosts_are_refused(idle_client):
    client, _ = idle_client
    assert client.get("/api/jobs", headers={"Host": "evil.example"}).status_code == 400
    assert client.get("/api/jobs", headers={"Host": "localhost:8000"}).status_code == 200


@pytest.mark.slow
def test_screen_waits_for_generation_and_queue_limit(tmp_path, tiny_model_dir):
    runs = tmp_path / "runs"
    with client_for(runs, tiny_model_dir) as client:
        manager = client.app.state.manager
        manager.max_queue = 1
        slow = {"elements": ["Na"], "n": 300, "sampler": "ddpm", "steps": 1000}
        first = client.post("/api/jobs", json=slow).json()["id"]
        early = client.post(f"/api/jobs/{first}/screen", json={})
        assert early.status_code == 409
        assert "not finished" in early.json()["error"]
        full = client.post("/api/jobs", json=SMALL)
        assert full.status_code == 429
        assert "queue is full" in full.json()["error"]
        assert int(full.headers["Retry-After"]) > 0
        assert sorted(p.name for p in runs.iterdir()) == [first]  # the refused one left nothing
        manager.stop()  # ends the slow job's worker
    assert not (runs / "unexpected").exists()


# ---- the page -----------------------------------------------------------------------------------
def test_page_and_static_files_load_nothing_from_the_internet(idle_client):
    import re

    client, _ = idle_client
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="viewer"' in page.text
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith("/static/") for s in sources), sources
    app_js = client.get("/static/app.js")
    assert app_js.status_code == 200
    assert "http://" not in app_js.text and "https://" not in app_js.text
    assert client.get("/static/3Dmol-min.js").status_code == 200
    licence = client.get("/static/3Dmol-LICENSE.txt")
    assert licence.status_code == 200 and "BSD" in licence.text


def test_cli_has_a_serve_command_bound_to_loopback():
    from pccd.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.runs) == ("127.0.0.1", 8000, "runs")
    assert args.func.__name__ == "_cmd_serve"
    assert (args.token, args.max_queue) == (None, 50)  # loopback: no token unless given


def test_cli_refuses_a_token_that_cannot_travel_in_a_url(capsys):
    from pccd.cli import main

    assert main(["serve", "--token", "a b;c=d", "--port", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --token must be")


@pytest.mark.slow
def test_pccd_serve_command_answers_on_loopback(tmp_path, tiny_model_dir):
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = "import sys; from pccd.cli import main; sys.exit(main(sys.argv[1:]))"
    args = ["serve", "--port", str(port), "--runs", str(tmp_path / "runs")]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args, "--model", str(tiny_model_dir), "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=2) as r:
                    info = json.loads(r.read())
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "pccd serve did not answer"
                time.sleep(0.2)
        assert info["model"] == "tiny-test"
        assert (tmp_path / "runs").is_dir()
    finally:
        proc.terminate()  # the server this test started
        output = proc.communicate(timeout=30)[0]
    assert f"http://127.0.0.1:{port}/" in output


def test_serve_precision_is_recorded_per_job_and_the_worker_follows_it(tmp_path, tiny_model_dir):
    """``pccd serve --precision bfloat16`` records it in the run.json of the jobs the page
    submits; the worker runs a job at its recorded precision, so a bf16 run made in the shell
    is one the page can continue, and a float32 server's jobs record float32."""
    from pccd.web.app import parse_generate
    from pccd.web.jobs import JobManager, _run_generate

    runs = tmp_path / "runs"
    with pytest.raises(ValueError, match="precision must be one of float32, bfloat16"):
        JobManager(runs, str(tiny_model_dir), precision="bf16")
    manager = JobManager(runs, str(tiny_model_dir), precision="bfloat16")
    settings, _ = parse_generate(dict(SMALL, n=2), manager, 10)
    assert settings.precision == "bfloat16"
    plain, _ = parse_generate(dict(SMALL, n=2), JobManager(runs, str(tiny_model_dir)), 10)
    assert plain.precision == "float32"
    job = runs / "bf16-job"
    check_run_settings(job, settings.to_json())
    assert manager.disk_state(job)["resumable"]
    _run_generate({"dir": str(job), "model": str(tiny_model_dir)})  # in this process
    assert len(summary_rows(job)) == 2  # generate_to_directory accepted the bf16 run.json


# ---- a token off loopback; no cross-site posts --------------------------------------------------
TOKEN = "test-token-0123456789"


@pytest.fixture
def guarded(tmp_path, tiny_model_dir):
    """A server that needs TOKEN (its lifespan is not started: no job ever runs)."""
    runs = tmp_path / "runs"
    shell_run(runs)
    return TestClient(create_app(runs, str(tiny_model_dir), token=TOKEN), base_url=BASE)


def test_without_the_token_every_route_is_401(guarded):
    for path in ("/", "/static/app.js", "/api/info", "/api/jobs", "/openapi.json"):
        response = guarded.get(path)
        assert response.status_code == 401, path
        assert "token" in response.json()["error"]
        assert response.headers["www-authenticate"] == "Bearer"
    assert guarded.post("/api/jobs", json=SMALL).status_code == 401
    assert guarded.get("/api/info?token=wrong-token-0123456789").status_code == 401
    assert guarded.get("/api/info", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert guarded.get("/api/jobs/shell-run/structures/0.cif").status_code == 401


def test_the_printed_url_sets_the_cookie_the_page_then_sends(guarded):
    page = guarded.get(f"/?token={TOKEN}")
    assert page.status_code == 200 and 'id="viewer"' in page.text
    cookie = page.headers["set-cookie"]
    assert cookie.startswith("pccd-token-") and TOKEN in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    # the page's own requests carry nothing but the cookie the browser keeps
    assert guarded.get("/static/app.js").status_code == 200
    assert guarded.get("/api/info").json()["model"] == "tiny-test"
    assert guarded.get("/api/jobs/shell-run/structures/0.cif").status_code == 200
    guarded.cookies.clear()
    assert guarded.get("/api/info").status_code == 401


def test_scripts_send_the_token_as_a_header(guarded):
    for headers in ({"Authorization": f"Bearer {TOKEN}"}, {"X-PCCD-Token": TOKEN}):
        assert guarded.get("/api/jobs", headers=headers).status_code == 200
        assert "set-cookie" not in guarded.get("/api/info", headers=headers).headers


def test_cross_site_posts_are_refused(guarded, idle_client):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    evil = {"Origin": "http://evil.example", **auth}
    response = guarded.post("/api/jobs", json=SMALL, headers=evil)
    assert response.status_code == 403 and "cross-site" in response.json()["error"]
    response = guarded.post("/api/jobs/shell-run/screen", json={}, headers=evil)
    assert response.status_code == 403
    form = {"Content-Type": "application/x-www-form-urlencoded", **auth}  # what a form sends
    assert guarded.post("/api/jobs", content=b"elements=Na", headers=form).status_code == 415
    # on loopback, without a token, the same holds
    client, runs = idle_client
    before = _tree(runs)
    response = client.post("/api/jobs", json=SMALL, headers={"Origin": "null"})
    assert response.status_code == 403
    response = client.post("/api/jobs", json=SMALL, headers={"Origin": "http://localhost:9"})
    assert response.status_code == 403
    assert _tree(runs) == before


def test_loopback_needs_no_token_and_other_addresses_get_one(monkeypatch, tmp_path, capsys):
    import uvicorn

    from pccd.errors import InputError
    from pccd.web import serve
    from pccd.web.auth import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "localhost", "::1", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.org"))
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append((app, kw)))
    serve(host="127.0.0.1", port=0, runs=tmp_path / "a")
    serve(host="0.0.0.0", port=0, runs=tmp_path / "b")
    printed = capsys.readouterr().out
    assert "http://127.0.0.1:0/  " in printed  # no token on loopback
    token = printed.split("http://0.0.0.0:0/?token=")[1].split()[0]
    assert len(token) >= 32
    open_app, guarded_app = (app for app, _ in started)
    assert TestClient(open_app, base_url=BASE).get("/api/info").status_code == 200
    assert TestClient(guarded_app, base_url=BASE).get("/api/info").status_code == 401
    headers = {"Authorization": f"Bearer {token}", "Host": "192.168.1.5:8000"}
    assert (
        TestClient(guarded_app, base_url=BASE).get("/api/info", headers=headers).status_code == 200
    )
    with pytest.raises(InputError, match="--token"):
        serve(host="0.0.0.0", port=0, runs=tmp_path / "c", token="short")


# ---- a model choice ------------------------------------------------------------------------------
@pytest.fixture
def two_models(tmp_path, tiny_model_dir):
    """A models directory with the tiny model and a copy of it named tiny-two, which says it was
    trained with the element list only."""
    import shutil

    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models / "tiny-test")
    shutil.copytree(tiny_model_dir, models / "tiny-two")
    meta = json.loads((models / "tiny-two" / "pccd.json").read_text())
    meta.update(name="tiny-two", trained_conditions=["elements"])
    (models / "tiny-two" / "pccd.json").write_text(json.dumps(meta))
    (models / "not-a-model").mkdir()  # no pccd.json: not offered
    return models


def test_the_page_offers_every_model_and_the_default_comes_first(tmp_path, two_models):
    runs = tmp_path / "runs"
    app = create_app(runs, str(two_models / "tiny-two"), models_dir=two_models)
    info = TestClient(app, base_url=BASE).get("/api/info").json()
    assert info["model"] == "tiny-two"  # pccd serve --model picks the default
    assert [m["name"] for m in info["models"]] == ["tiny-two", "tiny-test"]
    two = info["models"][0]
    assert two == {
        "name": "tiny-two",
        "family": "points",
        "conditions": ["elements"],
        "samplers": ["ddim", "ddpm"],
        "timesteps": 1000,
    }
    assert info["conditions"] == ["elements"]
    schema = TestClient(app, base_url=BASE).get("/openapi.json").json()
    body = schema["paths"]["/api/jobs"]["post"]["requestBody"]["content"]["application/json"]
    model = body["schema"]["properties"]["model"]["anyOf"][0]
    assert sorted(model["enum"]) == ["tiny-test", "tiny-two"]


def test_a_job_names_its_model_and_the_form_follows_it(tmp_path, two_models):
    from pccd.web.app import parse_generate
    from pccd.web.jobs import JobError, JobManager

    manager = JobManager(tmp_path / "runs", str(two_models / "tiny-test"), models_dir=two_models)
    settings, _ = parse_generate(dict(SMALL, model="tiny-two"), manager, 10)
    assert settings.model == "tiny-two"
    assert parse_generate(dict(SMALL), manager, 10)[0].model == "tiny-test"
    with pytest.raises(JobError, match="not trained on band_gap"):
        parse_generate(dict(SMALL, model="tiny-two", band_gap=1.0), manager, 10)
    with pytest.raises(JobError, match="not trained on formula"):
        parse_generate({"formula": "NaCl", "model": "tiny-two"}, manager, 10)
    assert parse_generate(dict(SMALL, band_gap=1.0), manager, 10)[0].band_gap == 1.0
    with pytest.raises(JobError, match="model must be one of"):
        parse_generate(dict(SMALL, model="pccd-cpu"), manager, 10)  # not in this models dir
    # a queued job of the second model is resumable and runs with that model's directory
    check_run_settings(tmp_path / "runs" / "second", settings.to_json())
    assert manager.disk_state(tmp_path / "runs" / "second")["resumable"]
    assert manager._job_model("second") == str((two_models / "tiny-two").resolve())


def test_the_form_has_a_model_choice():
    static = Path(__file__).resolve().parents[1] / "src/pccd/web/static"
    assert '<select id="f-model"' in (static / "index.html").read_text()
    script = (static / "app.js").read_text()
    assert "body.model = " in script and "info.models" in script


@pytest.mark.slow
def test_a_job_of_the_second_model_runs_with_it(tmp_path, two_models):
    runs = tmp_path / "runs"
    app = create_app(runs, str(two_models / "tiny-test"), models_dir=two_models)
    with TestClient(app, base_url=BASE) as client:
        job = client.post("/api/jobs", json=dict(SMALL, model="tiny-two", name="second"))
        assert job.status_code == 201, job.text
        default = client.post("/api/jobs", json=dict(SMALL, name="first")).json()["id"]
        body = wait_for(client, "second")
        assert body["status"] == "done", body
        assert body["model"] == "tiny-two" and body["progress"] == {"done": 4, "total": 4}
        assert wait_for(client, default)["model"] == "tiny-test"
    assert json.loads((runs / "second" / "run.json").read_text())["model"] == "tiny-two"
    assert len(summary_rows(runs / "second")) == 4
