# Two commands do all the set-up on a fresh clone:
#   make generate   # builds .venv if needed, then writes crystals with the shipped model
#   make test       # builds .venv if needed, then runs ruff and the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test test-fast lint generate docs clean-venv

venv: $(STAMP)

# torch is installed first and pinned: the 2.13.0 CPU wheel kept on this machine. Letting pip
# resolve an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev,eval,screen,web,docs]"
	touch $(STAMP)

# lint-imports: the package's floors ([tool.importlinter] in pyproject.toml); an import up a
# floor fails here
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -q

# everything but the tests marked slow (training runs, subprocess kills, batch runs, server
# worker processes, the chromium browser test, reconstructions): < 2 min (95 s on 2026-12-01)
test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow"

generate: $(STAMP)
	$(BIN)/pccd generate --elements Mg,Mn,O -n 20 --out out/MgMnO

# the documentation site (mkdocs.yml) into site/; --strict: a broken link, anchor or API
# reference fails the build. The two variables silence the theme's and a plugin's banners.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(BIN)/mkdocs build --strict

clean-venv:
	rm -rf $(VENV)
