"""Time from "submit 10 crystals" to a filled results table in ``pccd serve`` (issue 13).

Starts ``pccd serve`` (shipped model, ``--threads 1``) on a free loopback port with a
temporary ``--runs`` directory, drives Debian's chromium headless with Playwright, and for each
repetition opens the page, types Mg,Mn,O and n = 10 (seed = repetition), clicks Submit and
waits until the page shows that job as done with all 10 rows in its table. The clock runs from
the click to that moment. Repetitions share one server: the first includes the start of the
server's worker process and the model load, later ones do not. Writes the date, the machine's
load average (before and after) and per-run seconds.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serve_latency.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from common import CHROMIUM, free_port, launch_chromium, wait_until_serving

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--elements", default="Mg,Mn,O")
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/serve_latency.json"))
    args = p.parse_args()

    from playwright.sync_api import sync_playwright

    load_before = os.getloadavg()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    pccd = Path(sys.executable).parent / "pccd"
    runs: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [str(pccd), "serve", "--port", str(port), "--runs", f"{tmp}/runs", "--threads", "1"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            startup = wait_until_serving(url, proc)
            with sync_playwright() as pw:
                browser = launch_chromium(pw)
                try:
                    for rep in range(args.repeats):
                        page = browser.new_page(viewport={"width": 1500, "height": 860})
                        page.goto(url)
                        page.fill("#f-elements", args.elements)
                        page.fill("#f-n", str(args.n))
                        page.fill("#f-seed", str(rep))
                        with page.expect_response(
                            lambda r: r.url.endswith("/api/jobs") and r.request.method == "POST"
                        ) as posted:
                            t0 = time.perf_counter()
                            page.click("#submit")
                        job = posted.value.json()["id"]
                        page.wait_for_function(
                            """([id, n]) => document.querySelector('#job-title').textContent
                                   .includes(id)
                               && document.querySelector('#job-status .badge.done') !== null
                               && document.querySelectorAll('#table-body tr').length === n""",
                            arg=[job, args.n],
                            timeout=600_000,
                            polling=50,
                        )
                        seconds = time.perf_counter() - t0
                        failed = page.locator("#table-body tr.failed").count()
                        runs.append(
                            {"repetition": rep + 1, "seed": rep, "job": job,
                             "seconds": round(seconds, 2), "rows": args.n,
                             "failed_rows": failed}
                        )  # fmt: skip
                        print(json.dumps(runs[-1]), flush=True)
                        page.close()
                finally:
                    browser.close()
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    seconds = [r["seconds"] for r in runs]
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {
            "elements": args.elements,
            "n": args.n,
            "model": "shipped (pccd-cpu)",
            "sampler": "page default (DDIM, model's default steps)",
            "server": "pccd serve --threads 1",
            "browser": CHROMIUM,
            "repeats": args.repeats,
        },
        "server_startup_seconds": round(startup, 2),
        "runs": runs,
        "seconds_first": seconds[0] if seconds else None,
        "seconds_median": statistics.median(seconds) if seconds else None,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
