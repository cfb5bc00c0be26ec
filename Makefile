# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
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

# Label Studio lives in a venv of its own (it pins its dependencies tightly); the tests start it.
# Its packages need nothing of ours, so they install while our venv does (`make test` runs two jobs).
$(LABEL_STUDIO_BIN):
	$(PYTHON) -m venv .label-studio/venv
	.label-studio/venv/bin/pip install --quiet label-studio==$(LABEL_STUDIO_VERSION)

$(LABEL_STUDIO): $(LABEL_STUDIO_BIN) | $(STAMP)
	$(PY) tools/label_studio.py install

# The browser tests drive Debian's Chromium through Playwright (which never downloads a browser).
$(CHROMIUM):
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium

# torch and torchvision go first and pinned, so nothing else pulls another build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet torch==2.14.1 torchvision==0.29.1
	$(PIP) install --quiet -e '.[dev,ray]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: install
	bash tools/demo.sh

test:
	$(MAKE) --jobs=2 --output-sync=target lint $(LABEL_STUDIO) $(CHROMIUM)
	$(PY) -m pytest -q

bench: install $(LABEL_STUDIO)
	$(PY) tools/bench/run.py

lint: install
	$(VENV)/bin/ruff check curate annotation tests tools
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .label-studio demo-workspace .pytest_cache
