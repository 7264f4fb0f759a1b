"""What several benchmark scripts share, in one importable module with public names.

A benchmark runs as a script (``python benchmarks/X.py``), so its own folder is on
``sys.path`` and ``from common import …`` finds this file; tests import it as
``benchmarks.common``. Why one module: figures that are compared across scripts (the fixed-noise
val loss, the A/B scoring of a model, the covalent ratios of atom pairs) must come from one copy
of the code, and a script must not reach into a sibling's private helpers to get them.

* data and checkpoints — :data:`SPLITS`, :func:`val_table`, :func:`load_checkpoint`;
* the fixed-noise loss — :func:`fixed_val_dataset`, :func:`fixed_noise_val_loss`;
* geometry — :data:`IMAGES`, :func:`pair_ratios`;
* the A/B score of a model — :func:`score_model`, :func:`csp_k1`;
* a headless browser — :data:`CHROMIUM`, :func:`free_port`, :func:`launch_chromium` (Debian's
  ``chromium`` package, not Playwright's own download, which fails on the machines this was
  built on; nothing here imports Playwright, callers pass in the one they started).
"""

from __future__ import annotations

import functools
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
from ase.data import covalent_radii
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from pccd import data
from pccd.diffusion import diffusion_loss
from pccd.evaluate import request_quality
from pccd.evaluate.geometry import geometry_summary
from pccd.evaluate.matching import MATCHER_TOLERANCES, cell_formula
from pccd.generator import Request
from pccd.pipeline import PCCDPipeline
from pccd.training import CrystalDataset, collate

ROOT = Path(__file__).resolve().parents[1]
#: the shared data sets beside the checkout, one folder per split set
SHARED_DATA = ROOT.parent / "shared" / "data"
#: the MP split every shared figure is scored on
SPLITS = SHARED_DATA / "mp_pccd"

# --------------------------------------------------------------------------------------------
# Data and checkpoints
# --------------------------------------------------------------------------------------------


def load_checkpoint(run: Path) -> dict:
    """A run directory's ``last.ckpt``, on the CPU (steps, train seconds, weights)."""
    return torch.load(run / "last.ckpt", map_location="cpu", weights_only=False)


@functools.cache
def val_table() -> data.CrystalTable:
    """The val split, loaded once per process for all scoring."""
    return data.load(SPLITS / "val.csv.gz").table


# --------------------------------------------------------------------------------------------
# The fixed-noise validation loss
# --------------------------------------------------------------------------------------------


def fixed_val_dataset(pipe: PCCDPipeline, n: int = 512) -> CrystalDataset:
    """The n val crystals (draw seed 0) in their file frames, encoded for ``pipe``: the one
    fixed set behind every fixed-noise loss figure, so those figures compare across scripts."""
    table = val_table()
    idx = np.sort(np.random.default_rng(0).choice(len(table), n, replace=False))
    return CrystalDataset(table.subset(idx), pipe.rep_config, augment=False)


def fixed_noise_val_loss(pipe: PCCDPipeline, n: int = 512, batch: int = 128) -> float:
    """L1 ε loss of the model on n val crystals with per-batch fixed timesteps and noise, under
    the forward process the model was trained on (its schedule and SNR shift)."""
    ds = fixed_val_dataset(pipe, n)
    scheduler = pipe.make_scheduler("ddpm", None)
    losses = []
    with torch.no_grad():
        for b, start in enumerate(range(0, n, batch)):
            x, cond = collate([ds[i] for i in range(start, min(n, start + batch))])
            gen = torch.Generator().manual_seed(10_000 + b)
            loss = diffusion_loss(pipe.model, scheduler, x, cond, generator=gen)
            losses.append(float(loss) * x.shape[0])
    return sum(losses) / n


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------

#: the 27 lattice translations of a cell and its nearest images (index 13: the cell itself)
IMAGES = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)])


def pair_ratios(structure: Structure) -> np.ndarray:
    """(n, n, 27) covalent ratio d / (r_i + r_j) from atom i to atom j in each of the 27 nearest
    images of the cell (index 13 is the cell itself); an atom and itself there is inf.

    Fractional coordinates are wrapped to [0, 1) first, as the decoder writes them.
    """
    frac = np.mod(structure.frac_coords, 1.0)
    radii = covalent_radii[np.asarray(structure.atomic_numbers)]
    delta = frac[None, :, None, :] - frac[:, None, None, :] + IMAGES[None, None]  # (n, n, 27, 3)
    ratio = np.linalg.norm(delta @ structure.lattice.matrix, axis=-1)
    ratio /= (radii[:, None] + radii[None, :])[..., None]
    n = len(structure)
    ratio[np.arange(n), np.arange(n), 13] = np.inf
    return ratio


# --------------------------------------------------------------------------------------------
# The A/B score of a model
# --------------------------------------------------------------------------------------------


def csp_k1(pipe: PCCDPipeline, n: int = 200, seed: int = 0, repulsion: float | None = None) -> dict:
    """CSP with one candidate for each of ``n`` val formulas; peers' and strict match rates."""
    table = val_table()
    idx = np.sort(np.random.default_rng(seed).choice(len(table), n, replace=False))
    targets = [table.structure(int(i)) for i in idx]
    requests = [Request.parse(None, formula=cell_formula(s)) for s in targets]
    samples = pipe.generate(requests, seed=seed, batch_size=100, repulsion=repulsion)
    matcher = StructureMatcher(**MATCHER_TOLERANCES)
    rms, strict = [], 0
    for sample, true in zip(samples, targets, strict=True):
        if sample.structure is None:
            continue
        try:
            out = matcher.get_rms_dist(sample.structure, true)
            strict += int(matcher.fit(sample.structure, true))
        except Exception:  # degenerate candidates can break the lattice search: no match
            out = None
        if out is not None:
            rms.append(float(out[0]))
    geo = geometry_summary([s.structure for s in samples])
    return {
        "csp_n": n,
        "csp_match_k1": len(rms) / n,
        "csp_fit_k1": strict / n,
        "csp_mean_rms": float(np.mean(rms)) if rms else None,
        "csp_plausible": geo.plausible_share,
        "csp_median_ratio": geo.median_ratio,
    }


def score_model(
    name: str,
    model_dir: Path | str,
    run: Path | None,
    repulsion: float | None = None,
    *,
    spec: dict | None = None,
) -> dict:
    """One A/B row for a model: fixed-noise val loss, raw geometry and request quality of 200
    val element lists (seed 3), CSP k = 1 on 200 val formulas; with ``run``, the steps and
    train minutes of its checkpoint. ``spec`` is what the row records as the variant's recipe."""
    pipe = PCCDPipeline.from_pretrained(model_dir)
    table = val_table()
    requests = [Request.parse(els) for els in table.draw_element_lists(200, 3)]
    t0 = time.perf_counter()
    samples = pipe.generate(requests, seed=3, batch_size=100, repulsion=repulsion)
    gen_seconds = time.perf_counter() - t0
    structures = [s.structure for s in samples]
    row: dict = {"variant": name, "spec": spec or {}}
    if run is not None:
        ckpt = load_checkpoint(run)
        row.update(
            steps=int(ckpt["global_step"]),
            train_minutes=round(float(ckpt["train_seconds"]) / 60, 2),
        )
    row.update(
        val_loss_fixed_noise=round(fixed_noise_val_loss(pipe), 5),
        generate_200_seconds=round(gen_seconds, 1),
        **{f"gen_{k}": v for k, v in geometry_summary(structures).to_dict().items()},
        **request_quality(structures, [r.elements for r in requests], table.num_sites().tolist()),
        **csp_k1(pipe, repulsion=repulsion),
        repulsion=repulsion,
    )
    return row


# --------------------------------------------------------------------------------------------
# A headless browser
# --------------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--enable-unsafe-swiftshader",  # WebGL on the CPU (SwiftShader) for the 3D viewer
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def free_port() -> int:
    """A loopback port nobody listens on, to start a server on before pointing a client at it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, proc, timeout: float = 180.0) -> float:
    """Seconds until the ``pccd serve`` process ``proc`` answers at ``url`` (any HTTP status
    counts, e.g. 401 without a token); raises if it exits or stays silent for ``timeout``."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"pccd serve exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/api/info", timeout=2):
                return time.perf_counter() - start
        except urllib.error.HTTPError:
            return time.perf_counter() - start
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("pccd serve did not answer")


def launch_chromium(playwright):
    """Debian's chromium, headless, from a started ``playwright.sync_api.sync_playwright()``."""
    return playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=list(LAUNCH_ARGS)
    )


SCHEMATHESIS_CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance"
)
"""What a generated request's answer must pass: no 5xx, and status, content type, headers and
body as ``/openapi.json`` documents them."""


def schemathesis_command(url: str, report: Path, max_examples: int = 30, seed: int = 1) -> list:
    """``schemathesis run`` against a live server's ``/openapi.json`` (the test suite's and
    ``api_fuzz.py``'s bounded run): coverage phase plus ``max_examples`` fuzzed cases per
    operation, one worker, a JUnit report at ``report``."""
    return [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{url}/openapi.json",
        *("--checks", SCHEMATHESIS_CHECKS, "--max-examples", str(max_examples)),
        *("--seed", str(seed), "--workers", "1"),
        *("--phases", "coverage,fuzzing", "--generation-database", "none"),
        *("--request-timeout", "30", "--no-color"),
        *("--report", "junit", "--report-junit-path", str(report)),
    ]
