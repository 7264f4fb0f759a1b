"""The package's floors (``[tool.importlinter]`` in pyproject.toml) hold, and can fail.

``make lint`` runs ``lint-imports``; these tests show that the contracts pass on the tree as it
is and that an import up a floor — even one hidden inside a function — breaks them, on a copy
of the package with that import added on purpose.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path, src: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with the project's contracts on the package under ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src), "COLUMNS": "200"}  # one line per contract
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(PYPROJECT), "--no-cache", "--no-logo"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """The package's Python files copied to ``tmp_path/src/pccd`` (model weights left out)."""
    shutil.copytree(
        ROOT / "src" / "pccd",
        tmp_path / "src" / "pccd",
        ignore=lambda _, names: [n for n in names if n in ("weights", "static", "__pycache__")],
    )
    return tmp_path / "src"


def test_the_package_keeps_its_contracts(tmp_path):
    result = lint_imports(tmp_path, ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_copy_keeps_them_too(package_copy):
    """The copy alone passes, so a broken contract below is the added import's doing."""
    result = lint_imports(package_copy.parent, package_copy)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "upward", "contract"),
    [
        # a leaf analysis reaching up to generation
        ("evaluate/matching.py", "import pccd.pipeline", "One layer per floor"),
        # the old loop: run directories importing an experiment that imports them, in a function
        (
            "runs.py",
            "def _upward():\n    from pccd.experiments.csp import run_csp  # on purpose\n",
            "One layer per floor",
        ),
        # the web page importing the command line (the CLI serves the web, not the reverse)
        ("web/jobs.py", "from pccd.cli import main", "One layer per floor"),
        # an independent sibling: sampling code importing training code
        ("pipeline.py", "import pccd.training", "One layer per floor"),
        # the network reading crystals
        ("model/layers.py", "from pymatgen.core import Structure", "no pymatgen, no ASE"),
    ],
)
def test_an_upward_import_breaks_the_contract(package_copy, module, upward, contract):
    path = package_copy / "pccd" / module
    path.write_text(path.read_text() + "\n" + upward + "\n")
    result = lint_imports(package_copy.parent, package_copy)
    assert result.returncode == 1, result.stdout + result.stderr
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(contract in line for line in broken), result.stdout
    assert "1 broken" in result.stdout
    importer = "pccd." + module.removesuffix(".py").replace("/", ".")
    assert importer in result.stdout  # the report names the offending module
