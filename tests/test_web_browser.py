"""``pccd serve`` in a real browser: Playwright driving Debian's chromium, headless.

Opens the page, submits a small job with the shipped model, waits for the table, clicks a
decoded crystal, checks that the 3D viewer drew something (pixels, not a blank canvas), downloads
its CIF and parses it. Skipped when /usr/bin/chromium is missing (``.ci/run`` installs it with
apt). ``PCCD_WEB_SCREENSHOT=docs/serve.png`` saves the README's screenshot there.
"""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import pytest

from benchmarks.common import CHROMIUM, free_port, launch_chromium

if not Path(CHROMIUM).exists():
    pytest.skip(
        "Debian's chromium is not installed (apt-get install -y chromium); "
        "Playwright's own browser download does not work here",
        allow_module_level=True,
    )
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def server(tmp_path):
    """``pccd serve`` (shipped model) on a free loopback port, in a thread of this process."""
    import uvicorn

    from pccd.web.app import create_app

    runs = tmp_path / "runs"
    app = create_app(runs, None, threads=1)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", runs
    srv.should_exit = True
    thread.join(30)


def _drawn_pixels(png: bytes) -> tuple[int, int]:
    """(pixels that are not background white, distinct colours) of a screenshot."""
    import numpy as np
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    inner = img[4:-4, 4:-4]  # leave out the element's border
    drawn = (np.abs(inner - 255).sum(axis=2) > 30).sum()
    colours = len({tuple(c) for c in inner.reshape(-1, 3)[::7]})
    return int(drawn), colours


@pytest.mark.slow
def test_submit_view_and_download_in_chromium(server, tmp_path):
    from pymatgen.core import Structure

    url, runs = server
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 860}, accept_downloads=True)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on(
                "requestfailed",
                lambda req: errors.append(f"request failed: {req.url}"),
            )
            page.goto(url)
            page.fill("#f-elements", "Na,Cl")
            page.fill("#f-n", "6")
            page.fill("#f-seed", "0")
            page.click("#submit")
            page.wait_for_selector("#jobs li .badge.done", timeout=180_000)
            page.wait_for_selector("#table-body tr", timeout=30_000)
            assert page.locator("#table-body tr").count() == 6
            ok_rows = page.locator("#table-body tr:not(.failed)")
            assert ok_rows.count() >= 1, "no crystal of the shipped model decoded"

            # sorting by density, then filtering, keeps the table consistent
            page.click("#table-head th[data-key=density]")
            assert page.locator("#table-head th.sorted-asc").count() == 1
            page.check("#ok-only")
            assert page.locator("#table-body tr.failed").count() == 0

            ok_rows.first.click()
            page.wait_for_selector("#lattice tr", timeout=30_000)
            page.wait_for_selector("#legend .item")
            time.sleep(1.0)  # let the WebGL frame settle
            drawn, colours = _drawn_pixels(page.locator("#viewer").screenshot())
            assert drawn > 2000, f"viewer canvas is blank ({drawn} drawn pixels)"
            assert colours >= 3
            assert "a, b, c" in page.inner_text("#lattice")

            page.check("#supercell")
            time.sleep(0.5)
            drawn_super, _ = _drawn_pixels(page.locator("#viewer").screenshot())
            assert drawn_super > 2000

            page.uncheck("#supercell")
            # for the screenshot: the largest plausible crystal
            page.check("#plausible-only")
            if page.locator("#table-body tr").count():
                page.click("#table-head th[data-key=atoms]")
                page.click("#table-head th[data-key=atoms]")
                page.locator("#table-body tr").first.click()
                page.wait_for_function(
                    "document.querySelector('#viewer-title').textContent.includes("
                    "document.querySelector('#table-body tr.selected').dataset.id)"
                )
            time.sleep(0.5)
            shot = Path(os.environ.get("PCCD_WEB_SCREENSHOT") or tmp_path / "serve.png")
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot))

            with page.expect_download() as info:
                page.click("#downloads a[data-format=cif]")
            target = tmp_path / "downloaded.cif"
            info.value.save_as(target)
            structure = Structure.from_file(target)
            assert len(structure) >= 1
            assert {e.symbol for e in structure.composition.elements} <= {"Na", "Cl"}
        finally:
            browser.close()
    assert not errors, errors
    job_dirs = [d for d in runs.iterdir() if d.is_dir()]
    assert len(job_dirs) == 1 and (job_dirs[0] / "summary.csv").exists()
