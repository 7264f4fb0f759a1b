"""End-to-end generation time: `pccd generate -n 100` (fast sampler) and 1000-step DDPM.

Usage:
    python benchmarks/generate_speed.py [--model DIR] [--n 100] [--repeats 3] [--skip-ddpm]
        [--precision float32|bfloat16]

The fast run is timed as a subprocess of the installed command (interpreter start, model
load, sampling, decoding, CIF + CSV writing all included). The DDPM run times 1000 ancestral
steps for n crystals through the Python API, decoding included. Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from pccd.pipeline import DEFAULT_DDIM_STEPS

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--elements", default="Mg,Mn,O")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps (pipeline default)")
    ap.add_argument("--repeats", type=int, default=3, help="fast runs; the median is reported")
    ap.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--skip-ddpm", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "generate_speed.json"))
    args = ap.parse_args()
    pccd = shutil.which("pccd") or str(Path(sys.executable).parent / "pccd")
    result: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": vars(args),
    }
    cmd = [pccd, "generate", "--elements", args.elements, "-n", str(args.n), "--quiet",
           "--precision", args.precision]  # fmt: skip
    if args.steps:
        cmd += ["--steps", str(args.steps)]
    if args.model:
        cmd += ["--model", args.model]
    times = []
    for _ in range(args.repeats):  # the first run may pay cold file caches (.pyc, weights)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            subprocess.run([*cmd, "--out", f"{tmp}/fast"], check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
            n_cif = len(list(Path(f"{tmp}/fast").glob("*.cif")))
    result["fast_runs_seconds"] = times
    result["fast_end_to_end_seconds"] = statistics.median(times)
    result["fast_cifs_written"] = n_cif
    print(
        f"pccd generate -n {args.n} (ddim {args.steps or DEFAULT_DDIM_STEPS}): "
        f"median {result['fast_end_to_end_seconds']:.1f} s of "
        f"{', '.join(f'{t:.1f}' for t in times)} s, {n_cif} CIFs"
    )
    if not args.skip_ddpm:
        from pccd.generator import Request
        from pccd.pipeline import PCCDPipeline

        pipe = PCCDPipeline.from_pretrained(args.model, precision=args.precision)
        t0 = time.perf_counter()
        samples = pipe.generate(Request.parse(args.elements.split(",")), args.n,
                                sampler="ddpm", steps=1000, batch_size=args.n)  # fmt: skip
        result["ddpm1000_seconds"] = time.perf_counter() - t0
        result["ddpm1000_decoded"] = sum(s.structure is not None for s in samples)
        print(f"DDPM 1000 steps, {args.n} crystals: {result['ddpm1000_seconds']:.0f} s")
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
