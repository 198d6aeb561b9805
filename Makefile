# The README's two commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-fast install clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU wheel on these machines; an unpinned torch pulls GBs of CUDA packages
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) app.py

# The browser test drives Debian's chromium with Playwright (no browser download).
BROWSER_STAMP := $(VENV)/.browser

$(BROWSER_STAMP): $(STAMP)
	$(PY) -m pip install --quiet playwright
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	touch $(BROWSER_STAMP)

# The Ray cluster tests (tests/test_ray.py) need Ray: pyproject's `cluster` extra, the one place its version is
# pinned (`make run` does without it; only `app.py --cluster` needs it). With pip's dependencies this time: the
# extra is the only dependency pyproject lists (the rest come from requirements.txt, hence --no-deps above).
RAY_STAMP := $(VENV)/.ray

$(RAY_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e ".[cluster]"
	touch $(RAY_STAMP)

# Two workers (pytest-xdist), each taking whole test files, so a module's live server starts once: many tests
# wait on servers and worker processes, which the other worker's tests fill.
test: $(STAMP) $(BROWSER_STAMP) $(RAY_STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

# Everything but the live-server, browser and multi-process tests (marked slow): an answer in a few minutes.
test-fast: $(STAMP) $(RAY_STAMP)
	$(PY) -m pytest -q -m "not slow" tests

clean:
	rm -rf $(VENV)
