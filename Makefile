# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
UV := $(VENV)/bin/uv
# The install stamp changes whenever pyproject.toml does, so a changed dependency list reinstalls.
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

export PIP_DISABLE_PIP_VERSION_CHECK := 1

# Label Studio's venv, with the migrated data template that new workspaces' servers copy.
LABEL_STUDIO := .label-studio/venv/curate-template/label_studio.sqlite3
LABEL_STUDIO_BIN := .label-studio/venv/bin/label-studio
LABEL_STUDIO_VERSION := $(shell sed -n 's/^LABEL_STUDIO_VERSION = "\(.*\)"/\1/p' annotation/server.py)
CHROMIUM := /usr/bin/chromium

.PHONY: install demo test bench lint clean

install: $(STAMP)

# uv (from PyPI) installs everything but torch and torchvision, downloading in parallel: minutes faster.
# --compile-bytecode: pip compiles at install, uv does not; where PYTHONDONTWRITEBYTECODE is set (as here),
# every process would compile each module it imports again (the Ray tests took 4 minutes instead of 2.5).
$(UV):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet 'uv>=0.9'

# Label Studio lives in a venv of its own (it pins its dependencies tightly); the tests start it.
# Its packages need nothing of ours, so they install while our venv does (`make test` runs jobs side by side).
$(LABEL_STUDIO_BIN): | $(UV)
	$(PYTHON) -m venv .label-studio/venv
	$(UV) pip install --quiet --compile-bytecode --python .label-studio/venv/bin/python label-studio==$(LABEL_STUDIO_VERSION)

# Label Studio's own Python makes the template (minutes of migrations) while torch installs.
$(LABEL_STUDIO): $(LABEL_STUDIO_BIN)
	.label-studio/venv/bin/python tools/label_studio.py install

# The browser tests drive Debian's Chromium through Playwright (which never downloads a browser).
$(CHROMIUM):
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium

# torch and torchvision go first and pinned, so nothing else pulls another build: pip, because only pip
# takes them from the files this machine keeps on disk; uv then keeps them (pyproject pins the same).
$(STAMP): pyproject.toml | $(UV)
	$(PIP) install --quiet torch==2.14.1 torchvision==0.29.1
	$(UV) pip install --quiet --compile-bytecode --python $(PY) -e '.[dev,ray]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: install
	bash tools/demo.sh

# Three jobs: the apt install of Chromium, our venv and Label Studio's download and unpack side by side.
test:
	$(MAKE) --jobs=3 --output-sync=target lint $(LABEL_STUDIO) $(CHROMIUM)
	$(PY) -m pytest -q

bench: install $(LABEL_STUDIO)
	$(PY) tools/bench/run.py

lint: install
	$(VENV)/bin/ruff check curate annotation tests tools
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .label-studio demo-workspace .pytest_cache
