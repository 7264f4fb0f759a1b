"""The API's schema under generated requests (issue 29): schemathesis against a live server.

    .venv/bin/python benchmarks/api_fuzz.py --out benchmarks/results/api_fuzz

Starts ``pccd serve`` (the shipped default model, ``--max-n 4 --max-queue 2``, so valid jobs
soon meet a full queue and its 429 is checked too) on a free loopback port with a temporary
``--runs``, and runs the test suite's bounded ``schemathesis run`` against its
``/openapi.json`` (:func:`common.schemathesis_command`: coverage phase plus 30 fuzzed cases per
operation, seed 1). Checks: no 5xx; status code, content type, headers and body as documented.
Writes schemathesis' own summary (``summary.txt``), its JUnit report (``junit.xml``) and
``result.json`` (cases generated / passed, operations, failures, exit code, date, machine).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from common import ROOT, free_port, schemathesis_command, wait_until_serving


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "api_fuzz")
    p.add_argument("--max-examples", type=int, default=30)
    args = p.parse_args()
    args.out = args.out.resolve()  # schemathesis runs in a scratch directory
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as work:
        serve = [sys.executable, "-m", "pccd.cli", "serve", "--port", str(port), "--runs",
                 f"{work}/runs", "--threads", "1", "--max-n", "4", "--max-queue", "2"]  # fmt: skip
        proc = subprocess.Popen(serve, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_until_serving(url, proc)
            run = subprocess.run(
                schemathesis_command(url, args.out / "junit.xml", args.max_examples),
                capture_output=True, text=True, timeout=900, cwd=work,
            )  # fmt: skip
        finally:
            proc.terminate()
            printed = proc.communicate(timeout=60)[0]
    output = run.stdout + run.stderr
    (args.out / "summary.txt").write_text(output)
    cases = re.search(r"(\d+) generated, (\d+) passed", output)
    operations = re.search(r'<testsuite [^>]*tests="(\d+)"', (args.out / "junit.xml").read_text())
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "exit_code": run.returncode,
        "cases_generated": int(cases.group(1)) if cases else None,
        "cases_passed": int(cases.group(2)) if cases else None,
        "operations": int(operations.group(1)) if operations else None,
        "server_tracebacks": printed.count("Traceback"),
        "settings": {"max_examples": args.max_examples, "seed": 1, "max_n": 4, "max_queue": 2},
        "machine": {"cpus": os.cpu_count(), "load_after": [round(x, 2) for x in os.getloadavg()]},
    }
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
