"""The documentation's code cannot rot: every ```bash and ```python block of the tutorials
(docs/tutorials/*.md) and of docs/getting-started.md runs here, page by page in a temporary
directory, with a small slice of ../shared/data beside it as ``../shared/data`` is beside a
checkout.

A block may carry a directive on the line just above it, ``<!-- test: ITEM; ITEM -->``:

* ``OLD => NEW`` — run it with OLD replaced by NEW (tiny sizes, a fake MLIP); OLD must occur,
  so a page edited away from its directive fails here. ``{port}`` in NEW is a free port, the
  same for the whole page;
* ``slow`` — run only in the full suite (``make test``); the page's other blocks run in the fast
  suite too, so a fast block must not need a slow one's output;
* ``background`` — start it and go on (a server); it is stopped when the page is done, and a
  page using ``{port}`` waits until that port answers;
* ``needs: MODEL`` — skipped while the shipped model MODEL is absent;
* ``fake: MODULE`` — ``tests/docs_fakes/MODULE.py`` stands in for a package (e.g. SLURM);
* ``skip: REASON`` — never run (only for the set-up commands, which run the suite itself).

Shell blocks run through ``bash -e`` and Python blocks through this interpreter, with the
interpreter's directory first on PATH (``pccd``, ``python``, ``dask`` are the venv's).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from pccd.generator import WEIGHTS_DIR

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = [DOCS / "getting-started.md", *sorted((DOCS / "tutorials").glob("*.md"))]
DATA = REPO.parent / "shared" / "data"
FAKES = Path(__file__).resolve().parent / "docs_fakes"
RUN = {"bash", "python"}
"""Languages that run; every other fenced block of these pages must be ``text`` (output)."""
SHOWN = {"text"}
FENCE = re.compile(r"^```(\S*)")
DIRECTIVE = re.compile(r"^<!--\s*test:\s*(.*?)\s*-->\s*$")
BLOCK_TIMEOUT = 300
REFERENCE_ELEMENTS = {"Al", "Ni"}
"""The elements of the reference slice: the screening pages use Al–Ni, which ASE's EMT knows."""


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    slow: bool = False
    background: bool = False
    skip: str | None = None
    needs: list[str] = field(default_factory=list)
    fakes: list[str] = field(default_factory=list)
    replace: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"

    def runnable_code(self, port: int) -> str:
        code = self.code
        for old, new in self.replace:
            assert old in code, f"{self}: the directive replaces {old!r}, which the block lacks"
            code = code.replace(old, new.replace("{port}", str(port)))
        return code


def parse(page: Path) -> list[Block]:
    """The fenced code blocks of ``page`` with their directives."""
    lines = page.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(1), i
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        block = Block(page, start + 1, lang, "\n".join(lines[start + 1 : end]) + "\n")
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        if d := DIRECTIVE.match(before):
            for item in (x.strip() for x in d.group(1).split(";")):
                if " => " in item:
                    old, new = item.split(" => ", 1)
                    block.replace.append((old, new))
                elif item == "slow":
                    block.slow = True
                elif item == "background":
                    block.background = True
                elif item.startswith("skip:"):
                    block.skip = item[len("skip:") :].strip()
                elif item.startswith("needs:"):
                    block.needs.append(item[len("needs:") :].strip())
                elif item.startswith("fake:"):
                    block.fakes.append(item[len("fake:") :].strip())
                else:
                    raise AssertionError(f"{block}: unknown directive item {item!r}")
        blocks.append(block)
        i = end + 1
    return blocks


def test_every_block_is_run_or_output_and_every_directive_applies():
    """Cheap and always run: no page hides code in another language, every directive parses
    and its replacements occur in its block, every shell block parses."""
    for page in PAGES:
        blocks = parse(page)
        assert any(b.lang in RUN for b in blocks), f"{page}: no code to run"
        for block in blocks:
            assert block.lang in RUN | SHOWN, f"{block}: ```{block.lang} is neither run nor output"
            if block.lang in SHOWN:
                assert not block.replace and not block.skip, f"{block}: a directive on output"
                continue
            code = block.runnable_code(port=1)
            if block.lang == "bash":
                check = subprocess.run(["bash", "-n"], input=code, text=True, capture_output=True)
                assert check.returncode == 0, f"{block}: {check.stderr}"
            else:
                compile(code, str(block), "exec")
            assert block.skip is None or page.name == "getting-started.md", (
                f"{block}: only the set-up commands may be skipped"
            )


# ---- running the pages -----------------------------------------------------------------------
def _slice(source: Path, target: Path, rows: int | None = None, keep=None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.read_csv(source, index_col=0, nrows=rows)
    if keep is not None:
        frame = frame[frame["elements"].map(keep)]
    frame.to_csv(target)


@pytest.fixture(scope="session")
def shared_slice(tmp_path_factory) -> Path:
    """``shared/data`` with the first rows of each split and the Al–Ni part of the reference
    database (the data the tutorials name, small enough for seconds)."""
    if not (DATA / "mp_pccd" / "val.csv.gz").exists():
        pytest.skip("shared data not beside the checkout")
    root = tmp_path_factory.mktemp("shared") / "shared"
    data = root / "data"
    for split in ("mp_pccd", "mp_pccd_bulk"):
        _slice(DATA / split / "train.csv.gz", data / split / "train.csv.gz", rows=40)
        _slice(DATA / split / "val.csv.gz", data / split / "val.csv.gz", rows=60)

    def al_ni(elements: str) -> bool:
        return set(json.loads(elements.replace("'", '"'))) <= REFERENCE_ELEMENTS

    _slice(DATA / "mp_reference.csv.gz", data / "mp_reference.csv.gz", keep=al_ni)
    with gzip.open(data / "mp_reference.csv.gz", "rt") as fh:
        assert sum(1 for _ in fh) > 10
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the background block exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"nothing answered on port {port} within {seconds} s")


def _stop(process: subprocess.Popen) -> None:
    """Stop a background block and everything it started (its own process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(15)


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def run_page(page: Path, work: Path, *, include_slow: bool) -> list[str]:
    """Run the page's blocks in order in ``work``; returns what ran (block locations)."""
    work.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MPLBACKEND"] = "Agg"
    env.pop("COLUMNS", None)
    background: list[subprocess.Popen] = []
    ran = []
    try:
        for n, block in enumerate(parse(page)):
            if block.lang not in RUN or block.skip is not None:
                continue
            if block.slow and not include_slow:
                continue
            if any(not (WEIGHTS_DIR / m / "pccd.json").exists() for m in block.needs):
                continue
            for fake in block.fakes:
                assert (FAKES / f"{fake}.py").is_file(), f"{block}: no tests/docs_fakes/{fake}.py"
            paths = [str(REPO), *([str(FAKES)] if block.fakes else [])]
            block_env = {**env, "PYTHONPATH": os.pathsep.join([*paths, env.get("PYTHONPATH", "")])}
            script = work / f".block-{n}.{'sh' if block.lang == 'bash' else 'py'}"
            script.write_text(block.runnable_code(port))
            command = (
                ["bash", "-e", str(script)]
                if block.lang == "bash"
                else [sys.executable, str(script)]
            )
            log = work / f".block-{n}.log"
            with log.open("w") as out:
                process = subprocess.Popen(
                    command, cwd=work, env=block_env, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            if block.background:
                background.append(process)
                if any("{port}" in new for _, new in block.replace):
                    _wait_for_port(port, process)
                ran.append(f"{block} (background)")
                continue
            try:
                code = process.wait(BLOCK_TIMEOUT)
            except subprocess.TimeoutExpired:
                _stop(process)
                raise AssertionError(f"{block} ran over {BLOCK_TIMEOUT} s:\n{_tail(log)}") from None
            assert code == 0, f"{block} exited with {code}:\n{_tail(log)}"
            ran.append(str(block))
    finally:
        for process in reversed(background):
            _stop(process)
    return ran


def _pages(slow: bool) -> list:
    """One test per page for its fast blocks; one more (slow) running every block of a page
    that has slow ones."""
    params = []
    for page in PAGES:
        blocks = [b for b in parse(page) if b.lang in RUN and b.skip is None]
        name = page.relative_to(DOCS).as_posix()
        has_slow = any(b.slow for b in blocks)
        if not slow and any(not b.slow for b in blocks):
            params.append(pytest.param(page, id=name))
        if slow and has_slow:
            params.append(pytest.param(page, id=name, marks=pytest.mark.slow))
    return params


@pytest.mark.parametrize("page", _pages(slow=False))
def test_page_runs(page, shared_slice, tmp_path):
    (tmp_path / "shared").symlink_to(shared_slice)
    ran = run_page(page, tmp_path / "work", include_slow=False)
    assert ran, f"{page}: nothing ran"


@pytest.mark.parametrize("page", _pages(slow=True))
def test_page_runs_with_its_slow_blocks(page, shared_slice, tmp_path):
    (tmp_path / "shared").symlink_to(shared_slice)
    ran = run_page(page, tmp_path / "work", include_slow=True)
    assert ran, f"{page}: nothing ran"
