"""A bounded load test of ``pccd serve`` on loopback (issue 29): many clients at once.

    .venv/bin/python benchmarks/serve_load.py --clients 20 --seconds 60 \
        --out benchmarks/results/serve_load.json

Starts ``pccd serve`` (the shipped default model, ``--threads 1``, ``--max-queue`` small enough
that the queue fills) on a free loopback port with a temporary ``--runs`` directory. For
``--seconds``, each of ``--clients`` asyncio clients (httpx) submits a small job
(``n`` crystals of a random element list from a fixed pool) and polls its status every
``--poll`` seconds until it is done, then submits again; a 429 is checked for its
``Retry-After`` header and honoured (at most 2 s). Then submitting stops and every accepted job
is polled until it finishes (``--drain`` seconds at most), and each is checked for exactly
``n`` crystal rows with a CIF each.

Stops by itself. The result file has every answer counted by status code, the 5xx count (the
target is none), the 429s and whether each carried Retry-After, accepted / finished / failed /
unfinished jobs, jobs with the wrong number of crystals, and status-poll latency (p50 / p95 /
max, target p95 ≤ 200 ms) over the polls made while jobs were running. The machine's load
average before and after is recorded: run it with nothing heavy beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
from common import free_port, wait_until_serving

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("clients", "seconds", "n", "poll", "max_queue", "model", "seed")
ELEMENT_POOL = ["Mg,Mn,O", "Na,Cl", "Li,Fe,P", "Ca,Ti,O", "Zn,S", "K,Br", "Ba,Sn,O", "Ga,As"]


class Tally:
    """What every client saw, shared by all (one event loop: no locks needed)."""

    def __init__(self) -> None:
        self.codes: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.poll_ms: list[float] = []
        self.submit_ms: list[float] = []
        self.rejected = 0
        self.rejected_without_retry_after = 0
        self.accepted: list[str] = []
        self.fivexx: list[str] = []

    def answer(self, method: str, path: str, response: httpx.Response) -> None:
        self.codes[response.status_code] += 1
        if response.status_code >= 500:
            self.fivexx.append(f"{method} {path} {response.status_code} {response.text[:200]}")


async def client(
    http: httpx.AsyncClient, tally: Tally, name: str, stop_at: float, args, rng: random.Random
) -> None:
    """Submit, poll to the end, submit again, until ``stop_at``."""
    k = 0
    while time.monotonic() < stop_at:
        body = {"name": f"{name}-{k}", "elements": rng.choice(ELEMENT_POOL), "n": args.n,
                "seed": rng.randrange(2**31)}  # fmt: skip
        k += 1
        tick = time.perf_counter()
        try:
            r = await http.post("/api/jobs", json=body)
        except httpx.HTTPError as exc:
            tally.errors[type(exc).__name__] += 1
            continue
        tally.submit_ms.append(1000 * (time.perf_counter() - tick))
        tally.answer("POST", "/api/jobs", r)
        if r.status_code == 429:
            tally.rejected += 1
            retry = r.headers.get("Retry-After")
            if retry is None:
                tally.rejected_without_retry_after += 1
            await asyncio.sleep(min(float(retry or 1), 2.0))
            continue
        if r.status_code != 201:
            tally.errors[f"submit {r.status_code}"] += 1
            continue
        job = r.json()["id"]
        tally.accepted.append(job)
        while time.monotonic() < stop_at:
            await asyncio.sleep(args.poll)
            tick = time.perf_counter()
            try:
                s = await http.get(f"/api/jobs/{job}", params={"cif": "false"})
            except httpx.HTTPError as exc:
                tally.errors[type(exc).__name__] += 1
                continue
            tally.poll_ms.append(1000 * (time.perf_counter() - tick))
            tally.answer("GET", "/api/jobs/{id}", s)
            if s.status_code == 200 and s.json()["status"] in ("done", "failed"):
                break


async def drain(http: httpx.AsyncClient, tally: Tally, jobs: list[str], args) -> dict:
    """Poll every accepted job until it finishes; check each done job's crystals."""
    deadline = time.monotonic() + args.drain
    final: dict[str, dict] = {}
    pending = list(jobs)
    while pending and time.monotonic() < deadline:
        still = []
        for job in pending:
            r = await http.get(f"/api/jobs/{job}")
            tally.answer("GET", "/api/jobs/{id}", r)
            body = r.json() if r.status_code == 200 else {"status": f"http {r.status_code}"}
            if body.get("status") in ("done", "failed"):
                final[job] = body
            else:
                still.append(job)
        pending = still
        if pending:
            await asyncio.sleep(1.0)
    done = [b for b in final.values() if b["status"] == "done"]
    wrong = [
        j for j, b in final.items() if b["status"] == "done"
        and (len(b["structures"]) != args.n or not all(s.get("cif") for s in b["structures"]))
    ]  # fmt: skip
    return {
        "accepted": len(jobs),
        "done": len(done),
        "failed": {j: b.get("error") for j, b in final.items() if b["status"] == "failed"},
        "unfinished": pending,
        "wrong_crystal_count": wrong,
        "crystals": sum(len(b["structures"]) for b in done),
    }


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


async def run(url: str, args) -> dict:
    tally = Tally()
    rng = random.Random(args.seed)
    limits = httpx.Limits(max_connections=args.clients + 2)
    async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits) as http:
        stop_at = time.monotonic() + args.seconds
        tick = time.monotonic()
        await asyncio.gather(*(
            client(http, tally, f"c{i:02d}", stop_at, args, random.Random(rng.random()))
            for i in range(args.clients)
        ))  # fmt: skip
        load_seconds = time.monotonic() - tick
        jobs = await drain(http, tally, tally.accepted, args)
    return {
        "load_seconds": round(load_seconds, 1),
        "answers_by_status": {str(k): v for k, v in sorted(tally.codes.items())},
        "server_errors_5xx": len(tally.fivexx),
        "server_error_examples": tally.fivexx[:5],
        "client_errors": dict(tally.errors),
        "queue_full_429": tally.rejected,
        "429_without_retry_after": tally.rejected_without_retry_after,
        "jobs": jobs,
        "status_poll_ms": {"n": len(tally.poll_ms), "p50": percentile(tally.poll_ms, 0.5),
                           "p95": percentile(tally.poll_ms, 0.95),
                           "max": percentile(tally.poll_ms, 1.0)},
        "submit_ms": {"n": len(tally.submit_ms), "p50": percentile(tally.submit_ms, 0.5),
                      "p95": percentile(tally.submit_ms, 0.95)},
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--n", type=int, default=2, help="crystals per job")
    p.add_argument("--poll", type=float, default=0.5, help="seconds between status polls")
    p.add_argument("--max-queue", type=int, default=8)
    p.add_argument("--drain", type=float, default=600.0)
    p.add_argument("--model", default=None, help="default: the shipped default model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_load.json"))
    args = p.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as runs:
        cmd = [sys.executable, "-m", "pccd.cli", "serve", "--port", str(port), "--runs", runs,
               "--threads", "1", "--max-queue", str(args.max_queue)]  # fmt: skip
        if args.model:
            cmd += ["--model", args.model]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_until_serving(url, proc)
            result = asyncio.run(run(url, args))
            result["server_alive_after"] = proc.poll() is None
        finally:
            proc.terminate()
            printed = proc.communicate(timeout=60)[0]
    result.update(
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        settings={k: getattr(args, k) for k in SETTINGS},
        machine={
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()],
        },
        server_tracebacks=printed.count("Traceback"),
    )
    targets = {
        "no_5xx": result["server_errors_5xx"] == 0,
        "429_has_retry_after": result["429_without_retry_after"] == 0,
        "every_accepted_job_finished_with_its_crystals": not result["jobs"]["failed"]
        and not result["jobs"]["unfinished"] and not result["jobs"]["wrong_crystal_count"],
        "poll_p95_le_200ms": (result["status_poll_ms"]["p95"] or 0) <= 200,
    }  # fmt: skip
    result["targets"] = targets
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
