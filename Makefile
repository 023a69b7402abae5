# Two commands do all the set-up on a fresh Debian machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
OUT    ?= trajforge-data

.PHONY: run test lint bench chromium postgresql clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,web,models,train,tasks]'
	@touch $@

# Chromium (and its driver, for MiniWoB's own Selenium environment in bench/web.py) and bubblewrap
# (the python environment's sandbox) from Debian's packages where they are missing; elsewhere
# Playwright's own download of Chromium.
chromium: $(STAMP)
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && \
	   command -v bwrap >/dev/null 2>&1; } || \
	 { if command -v apt-get >/dev/null 2>&1; then \
	     SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	     $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver bubblewrap >/dev/null; \
	   else $(BIN)/playwright install chromium; fi; }

# PostgreSQL's server, for the tests of lakes on a PostgreSQL catalog (they start their own cluster).
postgresql:
	@{ command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || \
	 { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	   $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq postgresql >/dev/null; }

run: $(STAMP) chromium
	$(BIN)/trajforge run --out $(OUT)

test: $(STAMP) chromium postgresql
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/rollout.py --env textworld --tasks 20 --samples 4
	$(BIN)/python bench/search.py --tasks 20
	$(BIN)/python bench/web.py --seeds 2

clean:
	rm -rf $(VENV) $(OUT)
